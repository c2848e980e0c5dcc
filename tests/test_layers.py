"""The package layering of the README's Code map, checked on the source (no imports run).

core <- preprocessing <- pipeline <- model <- launch, benchmarks: a package may import
only the packages before it (launch and benchmarks may import each other: the isic-bench
command lives in launch/commands/), and no module may reach itself again through its
imports, lazy (function-level) imports included.
"""

import ast
import os

from tests.conftest import PROJECT_ROOT

PACKAGES = ("core", "preprocessing", "pipeline", "model", "launch", "benchmarks")
ALLOWED = {
    "core": {"core"},
    "preprocessing": {"core", "preprocessing"},
    "pipeline": {"core", "preprocessing", "pipeline"},
    "model": {"core", "model"},
    "launch": set(PACKAGES),
    "benchmarks": set(PACKAGES),
}


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every first-party module."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(PROJECT_ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, PROJECT_ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict) -> set[str]:
    """First-party modules `path` imports anywhere in its body."""
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
    return {n for n in names if n.split(".")[0] in PACKAGES and n in modules}


def test_no_package_imports_a_layer_above_it():
    modules = _modules()
    wrong = [
        f"{m} imports {i}"
        for m, path in modules.items()
        for i in _imports(path, modules)
        if i.split(".")[0] not in ALLOWED[m.split(".")[0]]
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
