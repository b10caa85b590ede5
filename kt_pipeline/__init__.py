"""kt-pipeline: fine-tune and tune BERT-family text encoders with Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's oneDNN kernels stay at TF's default (on for x86). Stop 8 turned them off after
# an A/B confounded by tf.data autotuner stalls (fixed in reader.py); measured without the
# stalls, on trains MiniLM at 1.1-1.4x the examples/s of off (BENCHMARKS.md section 3).

__version__ = "0.1.0"
