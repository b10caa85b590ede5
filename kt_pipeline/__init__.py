"""kt-pipeline: fine-tune and tune BERT-family text encoders with Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN off: with it on, 4-5 of 6 MiniLM training windows ran on one of two cores in one
# A/B, against none with it off, and off was 5-10% faster in the good windows. The
# one-core windows still show up with it off in other runs (BENCHMARKS.md, section 3).
# Only takes effect if TensorFlow is imported after kt_pipeline; set 1 to turn it on.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
