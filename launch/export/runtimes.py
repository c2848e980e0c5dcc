"""The network alone in portable formats: ONNX (ONNX Runtime) and TFLite (LiteRT).

Both hold the Keras model's forward pass: float32 [N, S, S, 3] in [0, 1] -> float32
probabilities [N, S, S, 1], N free. Each format needs packages that are not required to
train (the `[export]` extra of setup.py); `*_missing()` says what is absent, so isic-export
can skip a format with a clear message instead of failing.

  onnx_missing / write_onnx / onnx_predictor        tf2onnx to convert, onnxruntime to run
  litert_missing / write_tflite / litert_predictor  TensorFlow's TFLite converter;
                                                    ai-edge-litert (or tf.lite) to run
  keras_predictor                                   the reference, Keras in this process

A predictor maps float32 [N, S, S, 3] to float32 [N, S, S] (numpy in, numpy out).
"""

import importlib.util
import os

import numpy as np

INSTALL_HINT = "pip install 'isic-unet[export]'"
ONNX_INPUT = "image"
ONNX_OUTPUT = "probabilities"


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _signature(model) -> list:
    """[TensorSpec float32 [None, S, S, 3] named ONNX_INPUT]: any batch size."""
    import tensorflow as tf

    size = int(model.input_shape[1])
    return [tf.TensorSpec([None, size, size, 3], tf.float32, name=ONNX_INPUT)]


def onnx_missing() -> str | None:
    """Why model.onnx cannot be written and checked here, or None."""
    absent = _missing(("tf2onnx", "onnx", "onnxruntime"))
    if absent:
        return f"{', '.join(absent)} not installed ({INSTALL_HINT})"
    return None


def litert_missing() -> str | None:
    """Why model.tflite cannot be written and checked here, or None."""
    import tensorflow as tf

    if not hasattr(tf, "lite") or not hasattr(tf.lite, "TFLiteConverter"):
        return f"this TensorFlow {tf.__version__} has no TFLite converter"
    if _missing(("ai_edge_litert",)) and not hasattr(tf.lite, "Interpreter"):
        return f"no LiteRT interpreter to check the file: ai-edge-litert not installed ({INSTALL_HINT})"
    return None


def write_onnx(model, path: str) -> None:
    """Converts the Keras model to ONNX at `path` (input "image", output "probabilities")."""
    import onnx

    # An explicit signature: Keras refuses a loaded model that has not been called yet.
    model.export(path, format="onnx", verbose=False, input_signature=_signature(model))
    graph = onnx.load(path)
    # tf2onnx names the output after the TensorFlow tensor ("Identity:0"); give it ours.
    old = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [ONNX_OUTPUT if name == old else name for name in node.output]
        node.input[:] = [ONNX_OUTPUT if name == old else name for name in node.input]
    graph.graph.output[0].name = ONNX_OUTPUT
    onnx.checker.check_model(graph)
    onnx.save(graph, path)


def onnx_predictor(path: str, threads: int | None = None):
    """A predictor running `path` with ONNX Runtime on the CPU (`threads`: intra-op
    threads, None: ONNX Runtime's default, one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(images, np.float32)})[0][..., 0]

    return predict


def write_tflite(model, path: str) -> None:
    """Converts the Keras model to a float32 TFLite flatbuffer at `path` (no quantisation,
    so probabilities match Keras'; batch size free)."""
    model.export(path, format="litert", verbose=False, input_signature=_signature(model))


def _interpreter(path: str, threads: int | None):
    if not _missing(("ai_edge_litert",)):
        from ai_edge_litert.interpreter import Interpreter
    else:  # TensorFlow's own copy (deprecated in favour of ai-edge-litert)
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path, num_threads=threads or os.cpu_count())


def litert_predictor(path: str, threads: int | None = None):
    """A predictor running `path` with the LiteRT interpreter (XNNPACK on the CPU;
    `threads`: None uses every core, as ONNX Runtime and TensorFlow do)."""
    interpreter = _interpreter(path, threads)
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    shape = [None]

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, np.float32)
        if shape[0] != images.shape:  # a new batch size: resize once, then reuse
            interpreter.resize_tensor_input(source["index"], list(images.shape))
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(source["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])[..., 0].copy()

    return predict


def keras_predictor(model):
    """The reference predictor: the Keras model, one `predict_on_batch` per call."""

    def predict(images: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(np.ascontiguousarray(images, np.float32)))[..., 0]

    return predict
