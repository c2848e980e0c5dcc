# The image cluster jobs run (launch/examples/: SLURM through Apptainer, Kubeflow TFJob):
# the project installed on the official TensorFlow 2.21 image, exactly as `make install`
# installs it (the pip lines below are the Makefile's; tests/test_container.py keeps them
# in step), so a cluster job runs the versions the test suite passed with.
#
# NOT BUILT HERE: this repository's machines have no Docker engine. README, "Container
# image", has the build and push commands:
#   docker build -t registry.example.com/isic-unet:2.21.0-gpu .
#   docker build --build-arg BASE=tensorflow/tensorflow:2.21.0 -t registry.example.com/isic-unet:2.21.0-cpu .
#
# BASE: tensorflow/tensorflow:2.21.0-gpu (CUDA and cuDNN for NVIDIA GPUs; the default) or
# tensorflow/tensorflow:2.21.0 (CPU only). Keep it at the TensorFlow of constraints.txt.
ARG BASE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE}

# No venv, unlike `make install`: the base image's TensorFlow is the build that matches
# its CUDA libraries, and constraints.txt pins that same version, so pip keeps it.
# PIP_BREAK_SYSTEM_PACKAGES: a base on a newer Ubuntu marks its system Python as managed
# by apt (PEP 668); pip then refuses any install into it without this. Older pips ignore it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/isic-unet
# The whole source tree (.dockerignore leaves out venvs, runs and data): the install is
# editable, as `make install`'s, so launch/configs/ and launch/examples/ stay next to it.
COPY . .
RUN python3 -m pip install --quiet -c constraints.txt --upgrade pip \
 && python3 -m pip install --quiet -c constraints.txt -e '.[test,export,pretrained]' \
 && cd / && python3 -c "import launch.commands.train, launch.commands.launch, launch.commands.bench"

# The console scripts (isic-train, isic-launch, isic-bench, ...) are on PATH; the examples
# name the command to run (TFJob `command:`, `apptainer exec ... python3 -m ...`). The base
# image's default command (a shell) is kept.
