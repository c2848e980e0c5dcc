"""A U-Net decoder on a pretrained encoder (model/encoders.py), for binary lesion masks.

The layout of segmentation_models' `Unet` and keras-hub's segmenters: the encoder's
features at strides 2, 4, 8, 16 are the skips, its stride-32 feature the bottleneck, and
five decoder stages each double the resolution. Decoder filters are
`base_filters * (8, 4, 3, 2, 1)` (16 -> 128/64/48/32/16, the decoder the issue measured).
Shapes at S = 128, base filters 16, efficientnet_lite0:

  input [B, 128, 128, 3] float32 in [0, 1] -> encoder normalisation (inside the model)
  encoder: s2 [B, 64, 64, 16], s4 [B, 32, 32, 24], s8 [B, 16, 16, 40],
           s16 [B, 8, 8, 112], s32 [B, 4, 4, 320]
  dec5 [B, 8, 8, 128]   (2x2 transposed conv of s32, concat s16, two 3x3 conv+BN+ReLU)
  dec4 [B, 16, 16, 64]  (... concat s8)      dec3 [B, 32, 32, 48]   (... concat s4)
  dec2 [B, 64, 64, 32]  (... concat s2)      dec1 [B, 128, 128, 16] (no skip at stride 1)
  output [B, 128, 128, 1] float32 probabilities (1x1 conv + sigmoid, float32 under any policy)

The decoder's units are model/unet.py's (2x2 transposed convolution rather than
UpSampling2D, for a deterministic GPU gradient; conv without bias before batch norm).
"""

import keras
from keras import layers

from model import encoders
from model import unet

# Filters of dec1 (stride 1) ... dec5 (stride 16) = base_filters * these: from the deepest
# stage up, base_filters * (8, 4, 3, 2, 1).
DECODER_MULTIPLIERS = (1, 2, 3, 4, 8)
STRIDE = 32  # the encoders' deepest stride: S must be a multiple of it


def build_encoder_unet(
    image_size: int,
    base_filters: int,
    encoder: str,
    weights: str,
    *,
    bn_momentum: float,
    sync_batch_norm: bool = False,
    name: str = "isic_unet",
) -> keras.Model:
    """Builds the encoder + U-Net decoder model (uncompiled).

    Args:
      image_size: S; inputs are float32 [B, S, S, 3] in [0, 1]; a multiple of 32.
      base_filters: decoder width: stage filters are base_filters * (8, 4, 3, 2, 1).
      encoder: one of encoders.ENCODERS.
      weights: the encoder's weights: "imagenet", "none" or a path (model/encoders.py).
      bn_momentum: momentum of every batch norm, the encoder's too.
      sync_batch_norm: global-batch batch-norm statistics (decoder and encoder).
      name: the model's name (the same as the U-Net's: the trainer's outputs keep their names).
    Returns:
      A functional `keras.Model` mapping [B, S, S, 3] to float32 probabilities [B, S, S, 1].
    Raises:
      ValueError: a bad size, width or encoder name.
      encoders.WeightsUnavailableError: pretrained weights asked for but not available.
    """
    if image_size < STRIDE or image_size % STRIDE:
        raise ValueError(
            f"image_size {image_size} must be a positive multiple of {STRIDE} "
            f"for the {encoder} encoder (5 stride-2 stages); use e.g. "
            f"{max(STRIDE, image_size // STRIDE * STRIDE)}"
        )
    if base_filters < 1:
        raise ValueError(f"base_filters must be >= 1, got {base_filters}")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    *skips, x = encoders.apply_encoder(
        inputs, encoder, weights, bn_momentum=bn_momentum, sync_batch_norm=sync_batch_norm
    )
    skips = [None, *skips]  # stride 1 has no skip: [None, s2, s4, s8, s16]
    for stage in reversed(range(len(DECODER_MULTIPLIERS))):
        filters = base_filters * DECODER_MULTIPLIERS[stage]
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{stage + 1}_upconv")(x)
        if skips[stage] is not None:
            x = layers.Concatenate(name=f"dec{stage + 1}_concat")([skips[stage], x])
        x = unet.double_conv(x, filters, f"dec{stage + 1}", sync_batch_norm, bn_momentum)
    # float32 whatever the global policy: probabilities, loss and metrics stay float32.
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)
