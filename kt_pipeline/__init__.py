"""kt-pipeline: fine-tune and tune BERT-family text encoders with Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's pooling (BFC) allocator on the CPU: the default one mallocs every tensor, and
# glibc maps each large one fresh from the kernel, so a training step page-faulted 13-17k times
# (the word embedding's 47 MB zero gradient alone is 11.7k). Pooled: 440-900, and steps 3-4%
# faster (BENCHMARKS.md section 3, stop 17, AMD EPYC). Where malloc keeps big blocks instead
# (stop 18's Ice Lake machine) there is nothing to save and it changes nothing. TensorFlow reads
# it when it runs its first op, so this works after `import tensorflow` too; set
# TF_CPU_ALLOCATOR_USE_BFC=false to opt out.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# TensorFlow's oneDNN kernels stay at TF's default (on for x86). Stop 8 turned them off after
# an A/B confounded by tf.data autotuner stalls (fixed in reader.py); measured without the
# stalls, on trains MiniLM at 1.1-1.4x the examples/s of off (BENCHMARKS.md section 3).

# On a machine with two cores or fewer (and no NVIDIA driver) batches run as two
# halves side by side, one core each, with one TensorFlow intra-op thread (set here unless
# set; TensorFlow reads it when it starts): MiniLM's steps 1.12-1.14x faster at 16-128 tokens
# a row (BENCHMARKS.md section 3, stop 21). KT_PIPELINE_BATCH_SPLIT=0 turns both off.
from kt_pipeline import batch_split as _batch_split  # noqa: E402

_batch_split.configure_threads()

__version__ = "0.1.0"
