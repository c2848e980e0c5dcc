"""`isic-export`'s options: the inference options fixed into the serving graph, and which
formats to write. Standard library only, like every config module."""

import dataclasses

from core.options import option
from launch.inference.config import InferenceConfig


@dataclasses.dataclass(frozen=True)
class ExportConfig(InferenceConfig):
    """`isic-export`: portable copies of a model (launch/export/exporter.py).

    The inference options of InferenceConfig (threshold, TTA, post-processing) are fixed into the
    serving graph when it is built, with isic-predict's defaults unless given.
    """

    onnx: bool = option(
        True,
        "Also write model.onnx (the network alone, for ONNX Runtime) "
        "when tf2onnx, onnx and onnxruntime are installed (pip install "
        "'isic-unet[export]'); otherwise it is skipped with a message.",
    )
    tflite: bool = option(
        True,
        "Also write model.tflite (the network alone, for LiteRT) when "
        "a LiteRT interpreter is there to check it (ai-edge-litert from the "
        "[export] extra, or TensorFlow's tf.lite); otherwise it is skipped "
        "with a message.",
    )
