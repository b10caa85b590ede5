"""kt-pipeline: fine-tune and tune BERT-family text encoders with Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# oneDNN off: in an A/B on 2 CPU cores (MiniLM training, BENCHMARKS.md section 3) off was
# 5-10% faster. The "one-core windows" once blamed on oneDNN were tf.data autotuner stalls
# at the end of `fit` calls, fixed in reader.py.
# Only takes effect if TensorFlow is imported after kt_pipeline; set 1 to turn it on.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
