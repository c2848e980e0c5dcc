"""Shared pytest setup: quiet TensorFlow logs, paths to optional real data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real ISIC sample, never committed; tests that need it skip when it is absent.
ISIC_SAMPLE = os.path.join(PROJECT_ROOT, "..", "shared", "isic2017-sample")
