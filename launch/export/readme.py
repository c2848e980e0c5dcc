"""The README.md isic-export writes next to the exported formats (`render(report)`).

It is written for whoever deploys the model without this project: what each file is,
how to call it from Python, TensorFlow Serving, ONNX Runtime and LiteRT, its inputs and
outputs, what the serving graph does, with the options fixed in it, and what the export's
own checks measured.
"""


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _files_table(report) -> str:
    rows = ["| file | what | size | export time |", "|---|---|---|---|"]
    what = {
        "serving": "SavedModel, end to end (signatures `segment`, `probabilities`, `network`)",
        "onnx": "the network alone, ONNX",
        "tflite": "the network alone, TFLite (LiteRT)",
    }
    for f in report.formats:
        if f.path is None:
            rows.append(f"| - | {what[f.name]} | not written: {f.skipped} | - |")
        else:
            rows.append(f"| `{f.path}` | {what[f.name]} | {f.megabytes:.1f} MB | {f.seconds:.1f} s |")
    rows.append(f"| (source) `{report.model}` | the Keras model | {report.keras_megabytes:.1f} MB | - |")
    return "\n".join(rows)


def _graph(report) -> str:
    c, s = report.config, report.image_size
    colour = report.colour_constancy
    constancy = (
        "shades of gray, p = {colour_constancy_p}".format(**colour)
        if colour.get("colour_constancy") == "shades_of_gray"
        else "none"
    )
    return f"""1. Decode the JPEG or PNG. A JPEG is decoded with DCT-domain downscaling at 1/2, 1/4 or
   1/8 scale (the largest that keeps both sides >= {s}), as the training records were
   built (Pillow's `draft`). PNGs of any mode (RGB, RGBA, grey, grey + alpha, palette,
   1-bit) become RGB, alpha dropped; 16-bit grey becomes value // 257, 16-bit colour
   its high byte.
2. Read the EXIF orientation (JPEG APP1, PNG eXIf; for JPEG also XMP `tiff:Orientation`).
3. Resize to {s} x {s} with Pillow's BOX filter, reproduced bit for bit (fixed-point
   weights, rounding, pass order); the aspect ratio is not kept.
4. Turn the {s} x {s} image upright by the orientation.
5. Colour constancy: {constancy}.
6. Scale to [0, 1] and run the U-Net{" on the 8 flips and rotations, averaged (TTA)" if c.tta else ""}.
7. Resize the {s} x {s} probability map to the upright input's H x W (Pillow's BILINEAR on
   float32, reproduced; antialiased when shrinking).
8. Threshold: foreground where p > {c.threshold:g}.
9. Post-processing: fill holes {_on(c.fill_holes)}, keep the largest region {_on(c.largest_component)}
   (foreground 8-connected, background 4-connected).
10. Return 0/255 as uint8 [H, W], and the confidence ({c.confidence}) of the {s} x {s} map of step 6.

These options were fixed at export time (`isic-export --threshold ... --tta
--fill_holes --largest_component`); re-export to change them."""


def _checks(report) -> str:
    lines = [
        "| image | mask size (H x W) | mask pixels unlike isic-predict's | max abs probability difference "
        "| confidence difference |",
        "|---|---|---|---|---|",
    ]
    for r in report.serving_parity:
        differ = round((1.0 - r.mask_agreement) * r.size[0] * r.size[1])
        lines.append(
            f"| {r.name} | {r.size[0]} x {r.size[1]} | {differ} ({1.0 - r.mask_agreement:.5%}) | "
            f"{r.max_probability_difference:.1e} | {r.confidence_difference:.1e} |"
        )
    for n in report.network_parity:
        lines.append(
            f"| {n.runtime} vs Keras, {n.images} images at {report.image_size} x "
            f"{report.image_size} | - | - | {n.max_difference:.1e} | - |"
        )
    return "\n".join(lines)


# render() is one f-string template, read as the README it writes: it is the one
# function tests/test_layers.py lets run past 60 lines (TEMPLATES there).
def render(report) -> str:
    """The README text for an `exporter.ExportReport`."""
    s = report.image_size
    tta = " (mean over the 8 flips and rotations: TTA was on)" if report.config.tta else ""
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    return f"""# Exported ISIC lesion segmentation model

Made by `isic-export` from `{report.model}` in {report.seconds:.0f} s ({versions}).
Input size of the network: S = {s}.

{_files_table(report)}

## `serving/`: the end-to-end SavedModel

No code of the training project is needed: any TensorFlow >= 2.16 runtime (TensorFlow
Serving, `tf.saved_model.load`, the C API) runs it.

| signature | input | output |
|---|---|---|
| `segment` (also `serving_default`) | `image_bytes`: `tf.string` scalar, a JPEG or PNG file's bytes | `mask`: `uint8` [H, W], 0 or 255; `confidence`: `float32` scalar in [0, 1] |
| `probabilities` | `image_bytes`: the same | `probabilities`: `float32` [H, W] in [0, 1]; `confidence` |
| `network` | `images`: `float32` [N, {s}, {s}, 3], RGB in [0, 1] | `probabilities`: `float32` [N, {s}, {s}]{tta}; `confidence`: `float32` [N] |

`confidence` is isic-predict's per-image confidence (its `confidence.csv`; signal
`{report.config.confidence}`): low means the mask is worth a look.

H x W is the input's own size after its EXIF orientation, as `isic-predict` writes masks.
The `segment` graph does what `isic-predict` does:

{_graph(report)}

Python:

```python
import tensorflow as tf
served = tf.saved_model.load("serving")
with open("lesion.jpg", "rb") as f:
    mask = served.signatures["segment"](image_bytes=tf.constant(f.read()))["mask"]  # uint8 [H, W]
```

TensorFlow Serving (REST; binary inputs are sent base64-encoded as `{{"b64": ...}}`):

```sh
docker run -p 8501:8501 -v "$PWD/serving:/models/isic/1" -e MODEL_NAME=isic tensorflow/serving
printf '{{"signature_name": "segment", "inputs": {{"image_bytes": {{"b64": "%s"}}}}}}' \\
  "$(base64 -w0 lesion.jpg)" > request.json
curl -d @request.json http://localhost:8501/v1/models/isic:predict   # {{"outputs": [[0, 255, ...], ...]}}
```

(The request follows TensorFlow Serving's REST API documentation; isic-export's own checks
load the SavedModel with TensorFlow, they do not start a server.)
`saved_model_cli show --dir serving --all` lists the signatures. Errors: a file that is
neither JPEG nor PNG, or a broken one, fails the call (InvalidArgumentError). Not
reproduced from isic-predict: the XMP orientation of PNGs and ImageMagick's "Raw profile
type exif" chunk (such PNGs come out unrotated); CMYK JPEGs use TensorFlow's CMYK to RGB
rule (may differ from Pillow's by one level).

## `model.onnx` and `model.tflite`: the network alone

Both take `float32` [N, {s}, {s}, 3] (N free), RGB scaled to [0, 1], already resized to
{s} x {s} exactly as steps 1-5 above (the caller must reproduce them), and return
`float32` probabilities [N, {s}, {s}, 1] of the network alone (no TTA); threshold, resize
back and post-process yourself (steps 7-10).

```python
import numpy as np, onnxruntime
session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
p = session.run(["probabilities"], {{"image": images}})[0]          # images: float32 [N, {s}, {s}, 3]

from ai_edge_litert.interpreter import Interpreter                  # pip install ai-edge-litert
interpreter = Interpreter(model_path="model.tflite")
runner = interpreter.get_signature_runner("serving_default")        # input "image", output "output_0"
p = runner(image=images)["output_0"]
```

## What the export checked

isic-export refuses to publish a format that fails these checks on its synthetic test
images (every size and mode isic-predict accepts): `segment` masks must equal the files
isic-predict writes on >= 99.9% of the pixels, and every probability must be within 1e-4
of isic-predict's (serving) or Keras' (ONNX Runtime, LiteRT).

{_checks(report)}
"""
