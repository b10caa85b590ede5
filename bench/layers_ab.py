"""Benchmark 3g: `kt_pipeline.fast_layers` against KerasHub's stock layers, in one process.

    python bench/layers_ab.py --width 13      # SST-2's mean length
    python bench/layers_ab.py --width 24 --windows 10 --steps 20

Two MiniLM classifiers (CLS pooling, `FusedAdamW`, as `kt-pipeline train` builds them),
one built with `KT_PIPELINE_FAST_LAYERS=0` (stock layer norm, GELU, dropout and a full
last layer) and one with the default (`fast_layers` and the last layer for the first
position only). They train on the same fixed batch of `--width` tokens, window by window,
alternating which goes first. This machine's speed drifts by up to 30% within a session,
so two separate processes cannot resolve a 10-20% difference; alternated windows in one
process can. Prints the median ms per step of each and the median per-window speed-up.
"""

from __future__ import annotations

import argparse
import os
import time

from common import emit, median
from cpu_train import ours_model

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build(fast: bool):
    from kt_pipeline import fast_layers

    os.environ[fast_layers.ENV] = "1" if fast else "0"
    return ours_model(5e-5, 100, 10_000)  # read at build time: one model each way


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=13, help="tokens per row of the fixed batch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=10, help="timed windows per model")
    a = p.parse_args()

    import numpy as np
    import tensorflow as tf

    from kt_pipeline import reader

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1000, 20000, (a.batch, a.width)).astype("int32"),
         "padding_mask": np.ones((a.batch, a.width), bool)}
    y = rng.integers(0, 2, a.batch)
    data = tf.data.Dataset.from_tensors((x, y)).repeat().with_options(reader.data_options())
    models = {"stock": build(False), "fast": build(True)}
    for model in models.values():
        model.fit(data, steps_per_epoch=10, epochs=1, verbose=0)  # trace + warm up
    ms = {name: [] for name in models}
    for w in range(a.windows):
        for name in (list(models) if w % 2 == 0 else list(models)[::-1]):
            t = time.perf_counter()
            models[name].fit(data, steps_per_epoch=a.steps, epochs=1, verbose=0)
            ms[name].append(1000 * (time.perf_counter() - t) / a.steps)
    speedups = [s / f for s, f in zip(ms["stock"], ms["fast"])]
    emit(benchmark="fast_layers_ab", width=a.width, batch=a.batch, window_steps=a.steps,
         stock_ms_per_step=round(median(ms["stock"]), 1),
         fast_ms_per_step=round(median(ms["fast"]), 1),
         speedup_median=round(median(speedups), 3),
         speedup_range=[round(min(speedups), 3), round(max(speedups), 3)],
         stock_windows_ms=[round(v) for v in ms["stock"]],
         fast_windows_ms=[round(v) for v in ms["fast"]])


if __name__ == "__main__":
    main()
