"""kt-pipeline: fine-tune and tune BERT-family text encoders with Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
