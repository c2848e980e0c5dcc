"""What every `isic-*` command shares: flags made from its config, one error convention,
and the process environment TensorFlow reads when it is first imported.

A command module (launch/commands/; isic-bench's is benchmarks/bench.py, above launch) is thin:

    def main(args, config): ...               # args: the path flags; config: frozen dataclass
    def run(): cli.run(__name__, TrainConfig, main, paths=PATHS, required=("data_dir",))

`run` defines one absl flag per config field (name, default and help from the field, see
core/options.py) plus the command's path flags, parses the command line (with
`--flagfile` presets), builds the config (its `__post_init__` validates: a bad value is a
usage error), and calls `main`. Flags are defined when the command runs, not when its
module is imported, so commands can be imported side by side (tests, docs).

Errors: a `UserError` (bad data, a conflicting output, a missing file) prints
"isic-X: error: <message>" and exits 1 without a traceback; any other exception is a
bug and keeps its traceback.
"""

import atexit
import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import types
import typing

from absl import app
from absl import flags
from absl import logging

from core import files
from core import options
from core.errors import UserError
from launch.cluster import gpus

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
TF_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# Set ISIC_TF_LOGS=1 to see TensorFlow's C++ start-up lines (oneDNN notice, cuInit
# failure on machines without a GPU, XLA), which normal output leaves out.
SHOW_TF_LOGS_VARIABLE = "ISIC_TF_LOGS"


def prefer_onednn() -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set; returns whether oneDNN will be on.

    TensorFlow turns its oneDNN CPU kernels on by default only on some CPUs; on the others
    they are faster for this U-Net (docs/performance.md), so commands turn them on unless
    the user chose. Must run before the process imports TensorFlow; later it only warns.
    """
    if ONEDNN_VARIABLE not in os.environ and "tensorflow" in sys.modules:
        logging.warning(
            "TensorFlow was imported before %s could be set: oneDNN keeps TensorFlow's default for this CPU",
            ONEDNN_VARIABLE,
        )
        return False
    os.environ.setdefault(ONEDNN_VARIABLE, "1")
    return os.environ[ONEDNN_VARIABLE].strip().lower() not in ("0", "false", "off", "")


def quiet_tensorflow() -> None:
    """Hides TensorFlow's C++ INFO/WARNING/ERROR start-up lines unless asked for.

    Level 3 also hides the 'failed call to cuInit' ERROR printed on every machine without
    a GPU; real failures still surface as Python exceptions.
    """
    if os.environ.get(SHOW_TF_LOGS_VARIABLE, "") not in ("", "0"):
        return
    os.environ.setdefault(TF_LOG_VARIABLE, "3")


# C++ lines TensorFlow prints while it loads and finds its devices (and a few later ones).
# They come from absl's C++ logging before it is initialised, which no log level silences.
_STARTUP_NOISE = re.compile(
    r"(All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|failed call to cuInit|cuda_executor|cuda_dnn|cuda_fft|"
    r"cuda_blas|Unable to register cu|computation placer already registered|"
    r"This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate|"
    r"TF-TRT Warning|Attempting to register factory|"
    # Printed when a uint8 op of the serving graph is placed (isic-export): oneDNN's layout
    # pass declines it and TensorFlow's own kernel runs, with the same results.
    r"oneDNN supports DT_UINT8 only on platforms with AVX-512)"
)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices with their C++ start-up lines filtered out."""
    if "tensorflow" in sys.modules or os.environ.get(SHOW_TF_LOGS_VARIABLE, "") not in ("", "0"):
        return
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()


@contextlib.contextmanager
def filtered_stderr():
    """Leaves TensorFlow's C++ noise (_STARTUP_NOISE) out of what the block writes to stderr.

    stderr (file descriptor 2, where C++ writes) goes to a temporary file meanwhile; the
    lines that are not noise are written back afterwards (also when the block raises), so
    real errors stay, only later. Used around the import and around calls known to print
    such lines (isic-export's conversions). ISIC_TF_LOGS=1 turns it off.
    """
    if os.environ.get(SHOW_TF_LOGS_VARIABLE, "") not in ("", "0"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _STARTUP_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def prepare_environment() -> None:
    """The environment every command sets before anything imports TensorFlow."""
    quiet_tensorflow()
    prefer_onednn()


def define_config_flags(config_cls, flag_values=flags.FLAGS, module_name: str | None = None) -> None:
    """One absl flag per field of `config_cls` (a dataclass made with `options.option`)."""
    hints = options.field_types(config_cls)
    for field in dataclasses.fields(config_cls):
        _define(
            field.name,
            hints[field.name],
            field.default,
            field.metadata.get("help", ""),
            field.metadata.get("choices"),
            flag_values,
            module_name,
        )


def _define(name, kind, default, help_text, choices, flag_values, module_name) -> None:
    common = {"flag_values": flag_values, "module_name": module_name}
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a repeatable flag
        flags.DEFINE_multi_string(name, list(default) or None, help_text, **common)
        return
    if type(None) in args:  # X | None
        kind = next(a for a in args if a is not type(None))
    if choices is not None:
        flags.DEFINE_enum(name, default, [str(c) for c in choices], help_text, **common)
    elif kind is bool:
        flags.DEFINE_bool(name, default, help_text, **common)
    elif kind is int:
        flags.DEFINE_integer(name, default, help_text, **common)
    elif kind is float:
        flags.DEFINE_float(name, default, help_text, **common)
    elif kind is str:
        flags.DEFINE_string(name, default, help_text, **common)
    else:
        raise TypeError(f"option {name}: no flag type for {kind}")


def config_from_flags(config_cls, flag_values=flags.FLAGS):
    """Builds `config_cls` from parsed flags; a value its validation rejects is a UsageError."""
    hints = options.field_types(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        value = flag_values[field.name].value
        if typing.get_origin(hints[field.name]) is tuple:
            value = tuple(value or ())
        values[field.name] = value
    try:
        return config_cls(**values)
    except UserError as e:
        raise app.UsageError(str(e)) from None


def run(
    module_name: str,
    config_cls,
    main,
    *,
    paths: dict[str, str] | None = None,
    required: tuple[str, ...] = (),
    multi_paths: tuple[str, ...] = (),
    uses_tensorflow: bool = True,
    passthrough: bool = False,
    slurm_task: bool = False,
) -> None:
    """Runs a command: environment, flags, config, `main(args, config)`, error convention.

    Args:
      module_name: the command module's `__name__` (its docstring becomes `--help`'s text).
      config_cls: the command's frozen config dataclass (or None for a command without one).
      main: `main(args, config) -> int | None`; `args` has one attribute per path flag.
      paths: {flag name: help} of the command's file and folder flags (not part of the
        config: the same run may move between folders).
      required: flags that must be given (absl checks them before `main`).
      multi_paths: path flags that may be repeated (their value is a tuple).
      uses_tensorflow: import TensorFlow (quietly) after parsing, before `main`; False for
        commands that never need it (the cluster launcher, the builder).
      passthrough: the command takes positional arguments (what follows `--`, e.g. the
        launcher's worker command): `main` gets them as `args.argv`; otherwise they are
        a usage error.
      slurm_task: the command runs as one task of a SLURM job step (isic-train): it keeps
        its share of the node's GPUs before TensorFlow lists them (launch/cluster/gpus.py).
    """
    prepare_environment()
    program = _program_name(module_name)
    if sys.modules["__main__"].__doc__ is None:  # console-script stubs have none: lend ours
        sys.modules["__main__"].__doc__ = sys.modules[module_name].__doc__
    _define_command_flags(config_cls, paths, required, multi_paths)

    def _main(argv):
        if len(argv) > 1 and not passthrough:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = config_from_flags(config_cls) if config_cls is not None else None
        try:
            if slurm_task:
                gpus.select_slurm_task_gpus()
            if uses_tensorflow:
                import_tensorflow_quietly()
            args = _path_args(paths, multi_paths)
            if passthrough:
                args.argv = list(argv[1:])
            return main(args, config)
        except UserError as e:
            print(f"{program}: error: {e}", file=sys.stderr)
            return 1

    try:
        argv = local_flagfiles(sys.argv)
    except UserError as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        sys.exit(1)
    app.run(_main, argv=argv)


def _define_command_flags(config_cls, paths, required, multi_paths) -> None:
    """The path flags and one flag per config field, listed by `--help` as the command's."""
    key_module = sys.argv[0]  # absl's --help lists the flags "defined by" the main module
    for name, help_text in (paths or {}).items():
        if name in multi_paths:
            flags.DEFINE_multi_string(name, None, help_text, module_name=key_module)
        else:
            flags.DEFINE_string(name, None, help_text, module_name=key_module)
    if config_cls is not None:
        define_config_flags(config_cls, module_name=key_module)
    if required:
        flags.mark_flags_as_required(list(required))


def _program_name(module_name: str) -> str:
    """ "isic-train" from the console script's name, or from the module's under `python -m`."""
    program = os.path.basename(sys.argv[0])
    if not program.startswith("isic-"):  # `python -m launch.commands.train`: name the command
        spec = getattr(sys.modules[module_name], "__spec__", None)  # under -m: __main__
        program = "isic-" + (spec.name if spec else module_name).rsplit(".", 1)[-1]
    return program


def _path_args(paths: dict[str, str] | None, multi_paths: tuple[str, ...]) -> types.SimpleNamespace:
    """The parsed path flags, one attribute each (a tuple for the repeatable ones)."""
    return types.SimpleNamespace(
        **{
            name: (tuple(flags.FLAGS[name].value or ()) if name in multi_paths else flags.FLAGS[name].value)
            for name in (paths or {})
        }
    )


def local_flagfiles(argv: list[str]) -> list[str]:
    """`argv` with each remote `--flagfile` (gs://...) replaced by a local copy: absl reads
    flag files with `open`. The copies live in a temporary folder deleted at exit."""
    out, copies = [], None
    for index, arg in enumerate(argv):
        previous = argv[index - 1] if index else ""
        value = (
            arg.split("=", 1)[1]
            if arg.startswith(("--flagfile=", "-flagfile="))
            else (arg if previous in ("--flagfile", "-flagfile") else None)
        )
        if value is None or files.is_local(value):
            out.append(arg)
            continue
        if copies is None:
            copies = tempfile.mkdtemp(prefix="isic-flags-")
            atexit.register(shutil.rmtree, copies, True)
        local = os.path.join(copies, f"{index}-{os.path.basename(value)}")
        try:
            files.write_atomic(local, files.read_bytes(value))
        except Exception as e:  # OSError or tf.errors.OpError
            raise UserError(f"cannot read the flag file {value}: {e}") from None
        out.append(f"--flagfile={local}" if arg.startswith("-") else local)
    return out
