"""Portable copies of a trained model, each checked before it is published (`isic-export`).

`export_model(model_path, output_dir, config)` writes into output_dir:

  serving/       the end-to-end SavedModel (launch/export/serving.py): encoded JPEG or
                 PNG in, isic-predict's mask (or probability map) out
  model.onnx     the network alone for ONNX Runtime (launch/export/runtimes.py)
  model.tflite   the network alone for LiteRT
  README.md      how to call each one, inputs, outputs, what the graph does, the checks
  export.json    the options, the model, sizes, timings, the checks' figures, versions

ONNX and TFLite are written only when their packages are installed (the `[export]`
extra) and when the config does not turn them off; otherwise the reason is printed and
recorded. Every format is checked on synthetic images in all the sizes and modes
isic-predict accepts (launch/export/parity.py): `segment` against isic-predict's mask
files (>= 99.9% of pixels), probabilities within 1e-4 of isic-predict's and Keras'. The
export is assembled under a temporary name and renamed into place only when all checks
pass (core/files.py `atomic_dir`), so a failed check leaves no export behind
and an earlier one untouched.
"""

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import tempfile
import time
import warnings
from typing import Callable

from core import files
from core.errors import UserError
from launch.export import parity
from launch.export import readme
from launch.export import runtimes
from launch.export.config import ExportConfig
from launch.inference import models

SERVING_DIR = "serving"
README_FILE = "README.md"
EXPORT_FILE = "export.json"
# Reported in export.json and the README; the ones absent are left out.
_PACKAGES = ("tensorflow", "keras", "numpy", "pillow", "onnx", "onnxruntime", "tf2onnx", "ai-edge-litert")


@dataclasses.dataclass(frozen=True)
class PortableFormat:
    """How one network-only format is made and run."""

    name: str  # "onnx" or "tflite": also the ExportConfig field that turns it on
    file: str
    runtime: str  # what runs it in the check
    missing: Callable[[], str | None]
    write: Callable  # (keras model, path) -> None
    predictor: Callable  # path -> (float32 [N, S, S, 3] -> [N, S, S])


FORMATS = (
    PortableFormat(
        "onnx",
        "model.onnx",
        "ONNX Runtime",
        runtimes.onnx_missing,
        runtimes.write_onnx,
        runtimes.onnx_predictor,
    ),
    PortableFormat(
        "tflite",
        "model.tflite",
        "LiteRT",
        runtimes.litert_missing,
        runtimes.write_tflite,
        runtimes.litert_predictor,
    ),
)


@dataclasses.dataclass(frozen=True)
class FormatResult:
    """One format of the export: where it is, its size, its cost, or why it is absent."""

    name: str
    path: str | None  # relative to the export folder; None when not written
    megabytes: float | None
    seconds: float | None  # conversion and check
    skipped: str | None = None  # why it was not written


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What export.json records."""

    model: str
    output_dir: str
    image_size: int
    config: ExportConfig
    colour_constancy: dict
    keras_megabytes: float
    formats: list[FormatResult]
    serving_parity: list[parity.ImageParity]
    network_parity: list[parity.NetworkParity]
    seconds: float
    versions: dict


def versions() -> dict:
    """{package: version} of what made the export, and the Python version."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _megabytes(path: str) -> float:
    """Size of a local file or folder (the staged export, or the model; a remote model
    is read through tf.io.gfile)."""
    if not files.is_local(path):
        return files.getsize(path) / 1e6
    if os.path.isfile(path):
        return os.path.getsize(path) / 1e6
    return (
        sum(os.path.getsize(os.path.join(root, f)) for root, _, names in os.walk(path) for f in names) / 1e6
    )


@contextlib.contextmanager
def _quiet():
    """Silences the INFO lines TensorFlow's SavedModel writer and tf2onnx log for every step
    (absl's app turns INFO on), and tf2onnx's numpy deprecation warning: the export prints
    one line per format instead."""
    import logging

    from absl import logging as absl_logging

    previous, converter = absl_logging.get_verbosity(), logging.getLogger("tf2onnx")
    previous_converter = converter.level
    absl_logging.set_verbosity(absl_logging.WARNING)
    converter.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="keras")
            yield
    finally:
        absl_logging.set_verbosity(previous)
        converter.setLevel(previous_converter)


def _check_output_dir(output_dir: str) -> None:
    """Refuses to replace a folder that holds anything but an earlier export."""
    if files.exists(output_dir) and not files.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file; pass a folder for the export")
    if (
        files.isdir(output_dir)
        and files.listdir(output_dir)
        and not files.isfile(os.path.join(output_dir, EXPORT_FILE))
    ):
        raise UserError(
            f"--output_dir {output_dir} is not empty and holds no {EXPORT_FILE}, so "
            "it is not an earlier export to replace; pass a new or empty folder"
        )
    files.ensure_writable(os.path.dirname(files.absolute(output_dir).rstrip("/")))


def _serving(model, model_path, staging, config, colour_constancy, images, work):
    """Writes and checks serving/; returns (FormatResult, [ImageParity])."""
    import tensorflow as tf

    from launch.export import serving

    start = time.perf_counter()
    path = os.path.join(staging, SERVING_DIR)
    serving.write_saved_model(model, path, config, colour_constancy)
    checks = parity.check_serving(tf.saved_model.load(path), model_path, images[0], images[1], config, work)
    result = FormatResult("serving", SERVING_DIR, _megabytes(path), time.perf_counter() - start)
    return result, checks


def _portable(fmt: PortableFormat, config, model, staging, inputs, reference, log):
    """Writes and checks one network-only format; returns (FormatResult, NetworkParity | None)."""
    if not getattr(config, fmt.name):
        return FormatResult(fmt.name, None, None, None, skipped=f"--no{fmt.name}"), None
    reason = fmt.missing()
    if reason:
        log(f"isic-export: {fmt.file} not written: {reason}")
        return FormatResult(fmt.name, None, None, None, skipped=reason), None
    start = time.perf_counter()
    path = os.path.join(staging, fmt.file)
    fmt.write(model, path)
    check = parity.check_network(fmt.runtime, fmt.predictor(path), reference, inputs)
    return FormatResult(fmt.name, fmt.file, _megabytes(path), time.perf_counter() - start), check


def export_model(
    model_path: str, output_dir: str, config: ExportConfig, log: Callable[[str], None] = print
) -> ExportReport:
    """Writes and checks the export of the module docstring; returns its report.

    Raises:
      FileNotFoundError, ValueError: no usable model at `model_path`.
      UserError: `output_dir` holds something else; parity.ParityError: a format fails
        its check (nothing is published).
    """
    start = time.perf_counter()
    model, resolved = models.load_model(model_path)
    colour_constancy = models.read_preprocessing(resolved)
    _check_output_dir(output_dir)
    with (
        _quiet(),
        files.atomic_dir(output_dir, marker=EXPORT_FILE) as staging,
        tempfile.TemporaryDirectory(prefix="isic-export-") as work,
    ):
        os.makedirs(staging)
        folder = os.path.join(work, "images")
        names = parity.write_images(folder)
        served, serving_checks = _serving(
            model, resolved, staging, config, colour_constancy, (folder, names), work
        )
        log(
            f"isic-export: {SERVING_DIR}/ written and checked on {len(names)} images "
            f"({served.megabytes:.1f} MB, {served.seconds:.1f} s)"
        )
        inputs = parity.network_inputs(resolved, folder, names)
        reference = runtimes.keras_predictor(model)(inputs)
        results, network_checks = [served], []
        for fmt in FORMATS:
            result, check = _portable(fmt, config, model, staging, inputs, reference, log)
            results.append(result)
            if check is not None:
                network_checks.append(check)
                log(
                    f"isic-export: {fmt.file} written and checked with {fmt.runtime} "
                    f"({result.megabytes:.1f} MB, {result.seconds:.1f} s)"
                )
        report = ExportReport(
            model=resolved,
            output_dir=output_dir,
            image_size=models.model_image_size(model),
            config=config,
            colour_constancy=colour_constancy.to_dict(),
            keras_megabytes=_megabytes(resolved),
            formats=results,
            serving_parity=serving_checks,
            network_parity=network_checks,
            seconds=time.perf_counter() - start,
            versions=versions(),
        )
        files.write_atomic(os.path.join(staging, README_FILE), readme.render(report))
        files.write_atomic(
            os.path.join(staging, EXPORT_FILE), json.dumps(dataclasses.asdict(report), indent=1) + "\n"
        )
    return report
