"""Process settings that TensorFlow reads once, at import: entry points call these first.

oneDNN: TensorFlow turns its oneDNN CPU kernels on by default only on some CPUs (on the
AMD EPYC of docs/performance.md it leaves them off). Measured there with `isic-bench`, in
the same run: float32 matmul 134 vs 96 GFLOP/s, a 16-filter U-Net training step 12.2 vs
8.8 images/s, inference 19.0 vs 12.2 images/s. So the entry points turn them on unless
the user has set TF_ENABLE_ONEDNN_OPTS (to 0, say) themselves.
"""

import os
import sys

from absl import logging

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set; returns whether oneDNN will be on.

    Must run before the process imports TensorFlow; later it only warns.
    """
    if ONEDNN_VARIABLE not in os.environ and "tensorflow" in sys.modules:
        logging.warning("TensorFlow was imported before %s could be set: oneDNN keeps "
                        "TensorFlow's default for this CPU", ONEDNN_VARIABLE)
        return False
    os.environ.setdefault(ONEDNN_VARIABLE, "1")
    return os.environ[ONEDNN_VARIABLE].strip().lower() not in ("0", "false", "off", "")
