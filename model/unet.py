"""The U-Net of Ronneberger et al. (2015) for binary lesion segmentation, and its FLOP count.

Shapes at full size (S = 128, base filters F = 64, depth 4), "same" padding throughout so
the output has the input's size:

  input  [B, 128, 128, 3] float32 in [0, 1]
  down1  [B, 128, 128, 64]  -> pool [B, 64, 64, 64]
  down2  [B, 64, 64, 128]   -> pool [B, 32, 32, 128]
  down3  [B, 32, 32, 256]   -> pool [B, 16, 16, 256]
  down4  [B, 16, 16, 512]   -> pool [B, 8, 8, 512]
  bottleneck [B, 8, 8, 1024]
  up4 [B, 16, 16, 512] ... up1 [B, 128, 128, 64]   (2x2 transposed conv, concat skip, 2 convs)
  output [B, 128, 128, 1] float32 probabilities (sigmoid)

Only standard Keras layers are used, so `keras.models.load_model` needs no custom objects.
The builder never sets the mixed precision policy; the caller does. Under a mixed policy
every layer computes in float16/bfloat16 except the last 1x1 convolution, which is pinned
to float32 so the sigmoid and everything after it (loss, metrics) see float32.
"""

import keras
from keras import layers

# A training step costs about three forward passes: the forward pass itself, the
# gradient with respect to the activations (same MACs as forward) and the gradient
# with respect to the weights (same MACs again).
TRAINING_FLOPS_PER_FORWARD_FLOP = 3
# Poolings of the original architecture; the trainer records it in run.json.
DEPTH = 4


def _conv_bn_relu(x, filters: int, name: str, sync_bn: bool, bn_momentum: float):
    """3x3 conv (no bias: batch norm's beta is the shift) -> batch norm -> ReLU."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # synchronized=True all-reduces the batch moments over replicas (TF backend), so a
    # data-parallel step normalises with global-batch statistics like one device would.
    x = layers.BatchNormalization(momentum=bn_momentum, synchronized=sync_bn, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def double_conv(x, filters: int, name: str, sync_bn: bool, bn_momentum: float):
    """Two 3x3 conv + BN + ReLU units, the building block of every level."""
    x = _conv_bn_relu(x, filters, f"{name}_a", sync_bn, bn_momentum)
    return _conv_bn_relu(x, filters, f"{name}_b", sync_bn, bn_momentum)


def _check_size(image_size: int, base_filters: int, depth: int) -> None:
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if base_filters < 1:
        raise ValueError(f"base_filters must be >= 1, got {base_filters}")
    step = 2**depth
    if image_size < step or image_size % step:
        raise ValueError(
            f"image_size {image_size} must be a positive multiple of 2**depth = {step} "
            f"(depth {depth} halves it {depth} times); use e.g. {max(step, image_size // step * step)}"
        )


def build_unet(
    image_size: int,
    base_filters: int,
    depth: int = DEPTH,
    *,
    bn_momentum: float,
    sync_batch_norm: bool = False,
    name: str = "isic_unet",
) -> keras.Model:
    """Builds the U-Net (uncompiled).

    Args:
      image_size: S; inputs are float32 [B, S, S, 3] in [0, 1]. Must be divisible by
        2**depth.
      base_filters: filters of the first level; level k has base_filters * 2**k.
        64 gives 31,049,409 parameters (31,037,633 trainable) at depth 4.
      depth: number of pooling steps (contracting blocks).
      bn_momentum: momentum of the batch-norm moving statistics, in [0, 1) (the trainer
        passes `TrainConfig.bn_momentum`, whose comment says why it is not Keras' 0.99).
      sync_batch_norm: compute batch-norm statistics over the global batch across
        replicas (costs one all-reduce per layer; matters when per-replica batches are small).
      name: the model's name.
    Returns:
      A functional `keras.Model` mapping [B, S, S, 3] to float32 probabilities [B, S, S, 1].
    Raises:
      ValueError: image_size is not a positive multiple of 2**depth, or a bad depth/width.
    """
    _check_size(image_size, base_filters, depth)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = double_conv(x, base_filters * 2**level, f"down{level + 1}", sync_batch_norm, bn_momentum)
        skips.append(x)  # [B, S / 2**level, S / 2**level, F * 2**level]
        x = layers.MaxPooling2D(2, name=f"down{level + 1}_pool")(x)
    x = double_conv(x, base_filters * 2**depth, "bottleneck", sync_batch_norm, bn_momentum)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        # 2x2 transposed conv, stride 2: doubles H and W, halves the channels. Chosen over
        # UpSampling2D because nearest upsampling has no deterministic GPU gradient. It
        # keeps its bias: no batch norm follows it before the concatenation.
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level + 1}_upconv")(x)
        x = layers.Concatenate(name=f"up{level + 1}_concat")([skips[level], x])
        x = double_conv(x, filters, f"up{level + 1}", sync_batch_norm, bn_momentum)
    # float32 whatever the global policy: probabilities, loss and metrics stay float32.
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


def _conv_macs(height: int, width: int, kernel: int, c_in: int, c_out: int) -> int:
    """MACs of a stride-1 "same" conv producing [height, width, c_out]."""
    return height * width * kernel * kernel * c_in * c_out


def unet_flops_per_image(image_size: int, base_filters: int, depth: int = DEPTH) -> float:
    """Forward-pass FLOPs of `build_unet(image_size, base_filters, depth)` for one image.

    Counted analytically as 2 FLOPs per multiply-add of every convolution and transposed
    convolution (bias additions, batch norm, ReLU, pooling and the sigmoid are left out:
    together they are ~0.1% of the total). A 3x3 "same" conv producing [H, W, C_out] from
    C_in channels costs H*W*9*C_in*C_out MACs; a 2x2 stride-2 transposed conv from
    [h, w, C_in] costs h*w*4*C_in*C_out MACs (each input pixel scatters one 2x2xC_out patch).

    A training step costs about TRAINING_FLOPS_PER_FORWARD_FLOP (3) times the forward
    FLOPs (forward, gradient w.r.t. activations, gradient w.r.t. weights). At full size
    (128, 64, 4) this gives 24.08 GFLOP forward, ~72.3 GFLOP per training image.

    Returns:
      FLOPs as a float.
    """
    _check_size(image_size, base_filters, depth)
    macs = 0
    c_in = 3
    for level in range(depth + 1):  # contracting levels, then the bottleneck
        size = image_size // 2**level
        c_out = base_filters * 2**level
        macs += _conv_macs(size, size, 3, c_in, c_out) + _conv_macs(size, size, 3, c_out, c_out)
        c_in = c_out
    for level in reversed(range(depth)):
        size = image_size // 2**level
        c_out = base_filters * 2**level
        macs += (size // 2) * (size // 2) * 4 * c_in * c_out  # transposed conv
        macs += _conv_macs(size, size, 3, 2 * c_out, c_out) + _conv_macs(size, size, 3, c_out, c_out)
        c_in = c_out
    macs += _conv_macs(image_size, image_size, 1, c_in, 1)  # final 1x1 conv
    return 2.0 * macs
