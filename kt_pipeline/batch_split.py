"""Two-core CPUs: each batch's encoder pass split in halves that run side by side.

On a CPU TensorFlow runs one op on several threads (its intra-op pool) and independent
ops at once (its inter-op pool). On two cores the two compete: with TF's default
threads an attention-sized matrix product takes 0.58 ms against 0.40 with one intra-op
thread (``bench/matmul_threads.py``). One intra-op thread alone helps short batches but
leaves every element-wise kernel on one core, 7-23% slower at 32-128 tokens a row
(BENCHMARKS.md, section 3, stop 21). Here the backbone's training pass runs on the two
halves of the batch as two independent chains of ops, which the inter-op threads run
at once, one core each: with one intra-op thread a MiniLM training step is 1.12-1.14x
faster than with TF's default threads at 16-128 tokens a row and as fast at 2.

The arithmetic is unchanged: the halves' outputs are put back together before the head
and the loss, so the loss, the metrics and the gradients (summed over both halves by
autodiff) are the full batch's, to float32 rounding; each half draws its own dropout
masks. Evaluation and prediction split too (1.43x faster than the whole batch with TF's
default threads on SST-2 batches). Calls on real tensors split (a one-row batch leaves
one part empty); symbolic calls (building a functional model) and calls inside
:func:`suspended` (what ``export`` traces for its SavedModel) do not, and what gets saved
is untouched.

:func:`parts` decides: ``KT_PIPELINE_BATCH_SPLIT`` = ``0``/``1`` off, ``2``-``8`` that
many parts; unset or ``auto``: 2 on a machine with at most two cores and no NVIDIA
driver, else off. ``import kt_pipeline`` calls :func:`configure_threads`, which sets
``TF_NUM_INTRAOP_THREADS=1`` (unless set) when it is on, before TensorFlow starts.

Example:

>>> import os, keras, numpy as np
>>> os.environ["KT_PIPELINE_BATCH_SPLIT"] = "2"
>>> from kt_pipeline import batch_split
>>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> batch_split.install(inner)
True
>>> x = np.ones((5, 3), "float32")
>>> bool(np.allclose(inner(x, training=True), inner(x, training=False)))
True
>>> del os.environ["KT_PIPELINE_BATCH_SPLIT"]
"""

from __future__ import annotations

import contextlib
import os
import threading

ENV = "KT_PIPELINE_BATCH_SPLIT"
MAX_PARTS = 8
_STATE = threading.local()  # .suspended: calls traced now are not split


def parts() -> int:
    """How many parts a batch's encoder pass is split into (1: not split).

    From ``KT_PIPELINE_BATCH_SPLIT``; unset or ``auto`` gives 2 on a machine with at
    most two cores and no NVIDIA driver (``/proc/driver/nvidia``), else 1. A value
    that is not ``auto`` or a whole number from 0 to 8 counts as unset.
    """
    value = os.environ.get(ENV, "auto").strip().lower()
    if value.isdigit() and int(value) <= MAX_PARTS:
        return max(1, int(value))
    cores = os.cpu_count() or 1
    return 2 if cores <= 2 and not os.path.exists("/proc/driver/nvidia") else 1


def configure_threads() -> None:
    """One TensorFlow intra-op thread when batches are split (unless already set).

    Called by ``import kt_pipeline``; TensorFlow reads the variable when it starts, so
    it has no effect once TensorFlow has run an op.
    """
    if parts() > 1:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


def install(backbone) -> bool:
    """Make ``backbone``'s calls on real tensors run split in :func:`parts` parts (in place).

    Returns whether it is installed: not when :func:`parts` is 1, when a GPU or TPU is
    visible to TensorFlow, or when the backend is not TensorFlow. Calling it twice
    changes nothing more.
    """
    import keras

    if parts() < 2 or keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if any(tf.config.list_physical_devices(kind) for kind in ("GPU", "TPU")):
        return False
    from kt_pipeline.fast_layers import swap_call

    swap_call(backbone, _split_call, flag="_kt_split", stock="_kt_unsplit_call")
    return True


def install_in(model) -> bool:
    """:func:`install` on every KerasHub backbone inside ``model`` (a loaded classifier);
    True when one was installed."""
    from keras_hub.models import Backbone

    found = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
             if isinstance(layer, Backbone)]
    return any([install(layer) for layer in found])


@contextlib.contextmanager
def suspended():
    """Calls made (or traced) inside run whole: for graphs that outlive this process, such
    as an exported SavedModel, which may be served elsewhere."""
    before = getattr(_STATE, "suspended", False)
    _STATE.suspended = True
    try:
        yield
    finally:
        _STATE.suspended = before


def _split_call(self, inputs, training=None, mask=None, **kwargs):
    """The backbone's ``call`` on :func:`parts` slices of the batch, outputs concatenated
    along the batch axis (the stock call for symbolic inputs or inside :func:`suspended`)."""
    import tensorflow as tf
    from keras import tree

    stock = self._kt_unsplit_call
    flat = tree.flatten(inputs)
    k = parts()
    if (k < 2 or getattr(_STATE, "suspended", False) or not flat
            or not all(tf.is_tensor(x) for x in flat)):
        return stock(inputs, training=training, mask=mask, **kwargs)
    rows = tf.shape(flat[0])[0]
    bounds = [rows * i // k for i in range(k + 1)]  # part i: rows bounds[i]:bounds[i + 1]
    outs = []
    for i in range(k):
        def take(x, i=i):
            return None if x is None else x[bounds[i]:bounds[i + 1]]

        part_mask = None if mask is None else tree.map_structure(take, mask)
        outs.append(stock(tree.map_structure(take, inputs), training=training,
                          mask=part_mask, **kwargs))
    return tree.map_structure(lambda *xs: tf.concat(xs, axis=0), *outs)
