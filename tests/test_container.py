"""The container image (Dockerfile) installs the project as `make install` does, on the
TensorFlow that constraints.txt pins, and the examples run the image the README builds.

Read from the files (no Docker engine here: the image is never built in this repository).
"""

import os
import re
import shlex

from tests.conftest import PROJECT_ROOT

IMAGE = "registry.example.com/isic-unet"


def _read(*path: str) -> str:
    with open(os.path.join(PROJECT_ROOT, *path)) as f:
        return f.read()


def _make_variables(makefile: str) -> dict[str, str]:
    """NAME := value and NAME ?= value assignments of a Makefile."""
    return {m[0]: m[1].strip() for m in re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", makefile, re.M)}


def _pip_installs(lines: list[str]) -> list[list[str]]:
    """The arguments after `-m pip install` of each pip command in `lines`."""
    found = []
    for line in lines:
        for command in line.split("&&"):
            words = shlex.split(command.strip().rstrip("\\"))
            if words[1:4] == ["-m", "pip", "install"]:
                found.append(words[4:])
    return found


def make_install_arguments() -> list[list[str]]:
    """The pip arguments of the Makefile's install recipe, its variables expanded."""
    makefile = _read("Makefile")
    variables = _make_variables(makefile)
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    expanded = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], recipe)
    return _pip_installs(expanded.splitlines())


def dockerfile_arguments() -> list[list[str]]:
    """The pip arguments of the Dockerfile's RUN instructions (continuation lines joined)."""
    dockerfile = _read("Dockerfile").replace("\\\n", " ")
    return _pip_installs([line[4:] for line in dockerfile.splitlines() if line.startswith("RUN ")])


def test_the_image_installs_the_project_as_make_install_does():
    make = make_install_arguments()
    # The parser found the recipe: pip itself, then the project with its extras, both
    # constrained (today: -c constraints.txt -e '.[test,export,pretrained]').
    assert len(make) == 2 and all("constraints.txt" in args for args in make), make
    assert make[1][-1].startswith(".[") and make[1][-2] == "-e", make
    assert dockerfile_arguments() == make


def test_the_base_images_are_the_tensorflow_that_constraints_pin():
    pinned = re.search(r"^tensorflow==(\S+)$", _read("constraints.txt"), re.M).group(1)
    dockerfile = _read("Dockerfile")
    assert re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M).group(1) == f"tensorflow/tensorflow:{pinned}-gpu"
    assert f"--build-arg BASE=tensorflow/tensorflow:{pinned} " in dockerfile  # the CPU variant


def test_the_examples_run_the_image_the_readme_builds():
    readme = _read("README.md").replace("\\\n", " ")  # shell continuation lines joined
    built = set(re.findall(rf"docker build .*-t ({re.escape(IMAGE)}:\S+)", readme))
    assert built == {f"{IMAGE}:2.21.0-gpu", f"{IMAGE}:2.21.0-cpu"}
    for example in ("tfjob.yaml", "tfjob_gcs.yaml", "slurm_train.sbatch"):
        used = set(re.findall(rf"{re.escape(IMAGE)}:[\w.-]+", _read("launch", "examples", example)))
        assert used == {f"{IMAGE}:2.21.0-gpu"}, example
