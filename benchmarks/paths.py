"""Where the benchmarks find the project and the real ISIC sample."""

import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared real-data sample next to the project (absent: the stages use synthetic data).
SAMPLE_DIR = os.path.normpath(os.path.join(PROJECT_ROOT, "..", "shared", "isic2017-sample"))
