"""The layering of the README's Code map and the size of the rooms, checked on the source
(no imports run).

Bottom up: core <- preprocessing <- pipeline <- model <- launch <- benchmarks, and inside
launch its own layers (LAYERS below: what each part may import besides itself). No
module may reach itself again through its imports, lazy (function-level) imports
included, and nothing outside tests/ imports tests/. Every module outside tests/ has at
most MAX_MODULE_LINES lines and every function at most MAX_FUNCTION_LINES: a room a
reader takes in whole, split by role before it grows past that.
"""

import ast
import os

from tests.conftest import PROJECT_ROOT

PACKAGES = ("core", "preprocessing", "pipeline", "model", "launch", "benchmarks")
# The parts of launch/ that are layers of their own; a module of launch/ outside them is
# the part named by its first two dotted names (launch.cli, launch.layout).
LAUNCH_PARTS = ("launch.cluster", "launch.training", "launch.inference", "launch.export", "launch.commands")
_LIBRARY = {"core", "preprocessing", "pipeline", "model"}
_LAUNCH_LIBRARY = {"launch.layout", "launch.cluster", "launch.training", "launch.inference", "launch.export"}
LAYERS = {
    "core": set(),
    "launch": set(),  # the package's __init__, empty
    "preprocessing": {"core"},
    "pipeline": {"core", "preprocessing"},
    "model": {"core"},
    # The model directory's file names: what training writes and inference reads.
    "launch.layout": {"core"},
    # Starts and watches worker processes, before any of them imports TensorFlow.
    "launch.cluster": {"core"},
    # Training reads records (pipeline), never raw image files: no preprocessing.
    # The SLURM step's description (cluster/gpus.slurm_step_task) is one definition for the GPU
    # narrowing and the cluster resolver: training may read it (cluster uses core only).
    "launch.training": {"core", "pipeline", "model", "launch.layout", "launch.cluster"},
    # Inference also reads the raw folders and the manifest as the builder does: the one
    # image decoder, the pair discovery, the splits (preprocessing/).
    "launch.inference": _LIBRARY | {"launch.layout"},
    # The export serves what inference computes, in-graph (parity checks against it).
    "launch.export": _LIBRARY | {"launch.layout", "launch.inference"},
    # What every command shares; it picks each SLURM task's GPUs before TensorFlow starts.
    "launch.cli": {"core", "launch.cluster"},
    # Thin entry points: they may use everything in launch/ (`launch` itself: the
    # launcher finds the package's location).
    "launch.commands": _LIBRARY | _LAUNCH_LIBRARY | {"launch", "launch.cli"},
    # Benchmarks measure launch's library parts (the commands they run as subprocesses)
    # and run isic-bench (benchmarks/bench.py) through launch.cli; nothing imports them.
    "benchmarks": _LIBRARY | _LAUNCH_LIBRARY | {"launch.cli"},
}


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Templates: text read as the file it writes, not code to split.
TEMPLATES = {"launch/export/readme.py": {"render"}}


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every first-party module outside tests/."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(PROJECT_ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, PROJECT_ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _imported_names(path: str, modules: dict) -> set[str]:
    """Every absolute module name `path` imports anywhere in its body."""
    names = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from a import b`: b may be a module or a name in a
                full = f"{node.module}.{alias.name}"
                names.add(full if full in modules else node.module)
    return names


def _imports(path: str, modules: dict) -> set[str]:
    """First-party modules `path` imports anywhere in its body."""
    return {n for n in _imported_names(path, modules) if n in modules}


def layer(module: str) -> str:
    """The LAYERS key of a dotted module name."""
    parts = module.split(".")
    if parts[0] != "launch" or len(parts) == 1:
        return parts[0]
    return next((p for p in LAUNCH_PARTS if module == p or module.startswith(p + ".")), ".".join(parts[:2]))


def test_every_part_is_a_stated_layer():
    unknown = sorted({layer(m) for m in _modules()} - set(LAYERS))
    assert not unknown, f"say in LAYERS what these may import: {unknown}"


def test_no_module_imports_a_layer_above_it():
    modules = _modules()
    wrong = [
        f"{m} imports {i}"
        for m, path in modules.items()
        for i in _imports(path, modules)
        if layer(i) != layer(m) and layer(i) not in LAYERS[layer(m)]
    ]
    assert not wrong, wrong


def test_nothing_outside_tests_imports_tests():
    modules = _modules()
    wrong = [
        f"{m} imports {n}"
        for m, path in modules.items()
        for n in _imported_names(path, modules)
        if n == "tests" or n.startswith("tests.")
    ]
    assert not wrong, wrong


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    # A package's __init__ is imported with each of its modules; it imports none of ours.
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def _sizes(path: str, exempt=()) -> list[str]:
    """What in `path` is over a limit: 'N lines' for the module, 'name (N lines)' for each
    function or method not named in `exempt`."""
    with open(path) as f:
        text = f.read()
    lines = len(text.splitlines())
    found = [f"{lines} lines"] if lines > MAX_MODULE_LINES else []
    return found + [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and node.name not in exempt
    ]


def test_modules_and_functions_stay_small():
    too_long = {}
    for path in _modules().values():
        module = os.path.relpath(path, PROJECT_ROOT)
        found = _sizes(path, TEMPLATES.get(module, ()))
        if found:
            too_long[module] = found
    assert not too_long, (
        f"split these by role (at most {MAX_MODULE_LINES} / {MAX_FUNCTION_LINES}): {too_long}"
    )


def test_every_exemption_is_still_needed():
    stale = [module for module in sorted(TEMPLATES) if not _sizes(os.path.join(PROJECT_ROOT, module))]
    assert not stale, f"within the limits now: drop them from TEMPLATES: {stale}"
