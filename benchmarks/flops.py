"""FLOPs: the training step's count per image, and the machine's float32 matmul peak.

Achieved GFLOP/s = images/s x forward FLOPs per image (analytic: 2 FLOPs per multiply-add
of every convolution, transposed convolution and dense layer) x 3
(`unet.TRAINING_FLOPS_PER_FORWARD_FLOP`: forward, gradient w.r.t. activations, gradient
w.r.t. weights); the peak is the best of a few large float32 matmuls (stage 4, training.py).
"""

import dataclasses
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
    """Best float32 matmul of one process: [size, size] @ [size, size], all cores."""

    size: int
    repeats: int
    best_seconds: float
    gflops: float
    gflops_per_cpu_s: float  # per CPU-second of all threads: steadier under other load


def matmul_peak(size: int = 4096, repeats: int = 4) -> MatmulPeak:
    """Best float32 matmul GFLOP/s of this process: [size, size] @ [size, size], all cores."""
    import tensorflow as tf

    a = tf.random.uniform([size, size], dtype=tf.float32)
    b = tf.random.uniform([size, size], dtype=tf.float32)
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()  # warm-up: kernel selection, memory
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    flop = 2.0 * size**3
    return MatmulPeak(
        size=size,
        repeats=repeats,
        best_seconds=best,
        gflops=flop / best / 1e9,
        gflops_per_cpu_s=flop / best_cpu / 1e9,
    )


def layer_flops_per_image(model) -> float:
    """Forward FLOPs of one image, 2 per multiply-add of every convolution and dense layer,
    from the built layers' shapes (the U-Net's analytic count, for any model)."""
    import keras

    macs = 0
    for layer in model.layers:
        if not isinstance(
            layer,
            (
                keras.layers.Conv2D,
                keras.layers.Conv2DTranspose,
                keras.layers.DepthwiseConv2D,
                keras.layers.Dense,
            ),
        ):
            continue
        kernel = layer.kernel.shape  # [kh, kw, c_in, c_out or multiplier]
        if isinstance(layer, keras.layers.Conv2DTranspose):  # each input pixel scatters
            macs += int(np.prod(layer.input.shape[1:3])) * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            macs += int(np.prod(layer.output.shape[1:])) * kernel[0] * kernel[1]
        elif isinstance(layer, keras.layers.Conv2D):
            macs += int(np.prod(layer.output.shape[1:])) * kernel[0] * kernel[1] * kernel[2]
        else:
            macs += int(np.prod(kernel))
    return 2.0 * macs
