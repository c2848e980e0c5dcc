"""The end-to-end serving SavedModel: encoded image in, isic-predict's mask out.

`write_saved_model(model, path, config, colour_constancy)` writes a SavedModel whose
signatures need no Python code of ours (TensorFlow Serving, or `tf.saved_model.load` in
any TF >= 2.16 program):

  segment        image_bytes: tf.string [] (a JPEG or PNG file's bytes)
                 -> mask: uint8 [H, W], 0 or 255, at the upright input's size,
                    confidence: float32 [] in [0, 1] (isic-predict's confidence.csv value)
  probabilities  image_bytes: tf.string [] -> probabilities: float32 [H, W], confidence
  network        images: float32 [N, S, S, 3] in [0, 1] -> probabilities: float32 [N, S, S],
                 confidence: float32 [N]

`segment` is `serving_default`. Its graph is the path isic-predict takes
(launch/inference/prediction.py), each step the in-graph twin of the Python one
(launch/export/image_ops.py, mask_ops.py):

  decode (JPEG DCT-downscaled as Pillow's draft, any PNG mode, 16-bit -> 8-bit) ->
  EXIF orientation -> box resize to S x S -> upright -> colour constancy (if the model
  was trained with it) -> x / 255 -> the network (mean over the 8 flips and rotations
  with config.tta; the per-image confidence of config.confidence from that S x S map,
  launch/inference/confidence.py, the code isic-predict runs) -> bilinear resize to
  H x W -> p > threshold -> fill holes / largest region (as config says) -> 0/255.

The options of `config` (an InferenceConfig) and the colour constancy are fixed when the
graph is built: the export's README and export.json record them.
"""

import keras
import tensorflow as tf

from launch.export import image_ops
from launch.export import mask_ops
from launch.inference import confidence
from launch.inference import tta
from launch.inference.config import InferenceConfig
from pipeline import pixels
from preprocessing import decode


class ServingGraph:
    """The functions behind the signatures, for one model and one set of options."""

    def __init__(
        self,
        model: keras.Model,
        config: InferenceConfig,
        colour_constancy: decode.ColourConstancy = decode.NO_COLOUR_CONSTANCY,
    ):
        self.model = model
        self.config = config
        self.colour_constancy = colour_constancy
        self.image_size = int(model.input_shape[1])

    def prepare(self, image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """tf.string [] -> (float32 [S, S, 3] in [0, 1], int32 [2] upright (height, width))."""
        decoded, box, stored_size = image_ops.decode_small(image_bytes, self.image_size)
        orientation = image_ops.orientation(image_bytes)
        small = image_ops.box_resize(decoded, box, self.image_size)
        small = image_ops.upright(small, orientation)
        if self.colour_constancy.method == "shades_of_gray":
            small = image_ops.shades_of_gray(small, self.colour_constancy.p)
        x = pixels.to_unit_range(small)
        return x, image_ops.upright_size(stored_size, orientation)

    def network(self, images: tf.Tensor) -> dict:
        """float32 [N, S, S, 3] -> {"probabilities": float32 [N, S, S], "confidence":
        float32 [N]} (with TTA when the config asks: the mean over tta.TRANSFORMS, each
        turned back, summed in order; the confidence from that mean and the passes)."""
        if not self.config.tta:
            p = self.model(images, training=False)[..., 0]
            return {"probabilities": p, "confidence": self._confidence(p, None)}
        # One network call on the 8 transformed copies [8N, S, S, 3] (isic-predict makes 8
        # calls of N; the results agree to float32 rounding), then each copy turned back.
        copies = []
        for quarter_turns, flip in tta.TRANSFORMS:
            x = tf.image.rot90(images, quarter_turns)  # counter-clockwise, as np.rot90
            copies.append(tf.reverse(x, [2]) if flip else x)
        p = tf.split(self.model(tf.concat(copies, 0), training=False), len(copies))  # [N, S, S, 1]
        total, passes = None, []
        for (quarter_turns, flip), q in zip(tta.TRANSFORMS, p):
            q = tf.reverse(q, [2]) if flip else q
            q = tf.image.rot90(q, (4 - quarter_turns) % 4)[..., 0]
            passes.append(q)
            total = q if total is None else total + q
        mean = total / float(len(tta.TRANSFORMS))
        return {"probabilities": mean, "confidence": self._confidence(mean, tf.stack(passes))}

    def _confidence(self, p: tf.Tensor, passes) -> tf.Tensor:
        """float32 [N, S, S] (and the passes [T, N, S, S] or None) -> float32 [N]."""
        return confidence.confidence(p, self.config.threshold, self.config.confidence, passes)

    def probabilities(self, image_bytes: tf.Tensor) -> dict:
        """tf.string [] -> {"probabilities": float32 [H, W] at the upright input's size,
        "confidence": float32 []}."""
        x, size = self.prepare(image_bytes)
        out = self.network(x[None])
        small = out["probabilities"][0]  # [S, S]
        return {"probabilities": image_ops.bilinear_resize(small, size), "confidence": out["confidence"][0]}

    def segment(self, image_bytes: tf.Tensor) -> dict:
        """tf.string [] -> {"mask": uint8 [H, W] of 0 and 255, "confidence": float32 []}."""
        out = self.probabilities(image_bytes)
        mask = tf.math.greater(out["probabilities"], tf.cast(self.config.threshold, tf.float32))
        mask = mask_ops.apply(mask, self.config.fill_holes, self.config.largest_component)
        return {"mask": tf.cast(mask, tf.uint8) * 255, "confidence": out["confidence"]}


def write_saved_model(
    model: keras.Model,
    path: str,
    config: InferenceConfig,
    colour_constancy: decode.ColourConstancy = decode.NO_COLOUR_CONSTANCY,
) -> None:
    """Writes the SavedModel of the module docstring to `path` (a new folder).

    A plain tf.Module rather than keras.export.ExportArchive: Keras 3.15's archive stores
    every weight twice (as its Keras variables and again as the TensorFlow variables the
    functions use), which doubles the folder (250 MB instead of 125 MB for the 31M
    parameter U-Net); tracking the Keras variables once is enough for the functions.
    """
    graph = ServingGraph(model, config, colour_constancy)
    size = graph.image_size
    root = tf.Module()
    root.model_variables = list(model.variables)
    encoded = [tf.TensorSpec([], tf.string, name="image_bytes")]
    images = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]

    def concrete(fn, signature):
        return tf.function(fn, input_signature=signature, autograph=False).get_concrete_function()

    # The functions reach the SavedModel as signatures only, each traced once here: as
    # attributes of `root` they would be traced again inside tf.saved_model.save (its
    # save context is part of the tracing cache key), doubling the export's tracing.
    segment = concrete(graph.segment, encoded)
    # "serving_default" is what TensorFlow Serving calls when a request names no signature.
    tf.saved_model.save(
        root,
        path,
        signatures={
            "serving_default": segment,
            "segment": segment,
            "probabilities": concrete(graph.probabilities, encoded),
            "network": concrete(graph.network, images),
        },
    )
