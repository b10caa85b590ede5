"""kt-pipeline: fine-tune and tune BERT-family text encoders with Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN's CPU kernels intermittently ran the MiniLM train step on one of two cores
# (windows of 30 steps took 20 s or 41 s at random, the same CPU seconds either way);
# with them off every window took the fast time (BENCHMARKS.md, section 3). Only takes
# effect if TensorFlow is imported after kt_pipeline; set it to 1 to have them back.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
