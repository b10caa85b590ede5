"""Benchmark 3h: one of ours' speed switches off vs on, step by step on the same batches.

    python bench/train_ab.py --switch table --steps 300       # the embedding-table update
    python bench/train_ab.py --switch fast_layers --steps 300
    python bench/train_ab.py --switch none --steps 300        # control: both sides equal

Two MiniLM classifiers as `kt-pipeline train` builds them (CLS pooling, `FusedAdamW`,
bucketed SST-2 batches at max_seq_length 128, batch 32), one with the switch off and one
with it on, each reading its own copy of the same shuffled batch sequence. They take
turns one step at a time (the first to go alternates), so both see every batch width
and every phase of this machine's drifting speed; each step is timed to its loss being
read. Prints the median ms per step of each, the median and quartiles of the per-batch
ratio off/on (> 1: the switch makes training faster) and the ratio of the summed times.
With `--switch none` the two sides are identical: its spread is the resolution.
Windowed A/Bs (`layers_ab.py`) spread 0.86-1.17 per 25-step window on this machine;
this one resolves about 1% with 300 steps.

Switches: `table`: `FusedAdamW.table_min_rows` (off: the word embedding's update made
dense at the end of the step); `fast_layers`: `KT_PIPELINE_FAST_LAYERS` (off: KerasHub's
stock layer norm, GELU, dropout and full last layer).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from types import SimpleNamespace

from common import emit, median, require_sst2

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _build(switch: str, on: bool, opts):
    """A classifier with ``switch`` off or on (``none``: as built)."""
    import cpu_train as ct
    from kt_pipeline import fast_layers

    os.environ[fast_layers.ENV] = "0" if switch == "fast_layers" and not on else "1"
    model = ct.ours_model(5e-5, 100, 10_000, opts.pooling)  # reads the variable here
    if switch == "table" and not on:
        model.optimizer.table_min_rows = 1 << 62  # read when the step is traced
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--switch", choices=["table", "fast_layers", "none"], required=True)
    p.add_argument("--steps", type=int, default=300, help="timed steps of each side")
    a = p.parse_args()
    require_sst2()

    import cpu_train as ct
    import keras
    from kt_pipeline.config import TrainConfig

    cfg = TrainConfig()  # the reader's settings as `kt-pipeline train` has them
    opts = SimpleNamespace(bucket_sizes=None, static_buckets=False, pooling=cfg.pooling,
                           jit_compile=cfg.jit_compile)
    with tempfile.TemporaryDirectory() as d:
        caches = ct.ours_caches(d)
        keras.utils.set_random_seed(0)  # as cpu_train.ours_setup
        steps, iters = {}, {}
        for side in ("off", "on"):
            model = _build(a.switch, side == "on", opts)
            ds = ct.ours_data(caches["train"], "bucket", opts)
            model.fit(ds, steps_per_epoch=10, epochs=1, verbose=0)  # build and trace now
            iters[side] = iter(ds)  # same seed: both sides get the same batches
            steps[side] = model.make_train_function()
        for side in steps:  # warm up
            for _ in range(5):
                float(steps[side](iters[side])["loss"])
        ms = {"off": [], "on": []}
        for i in range(a.steps):
            for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
                t = time.perf_counter()
                float(steps[side](iters[side])["loss"])
                ms[side].append(1000 * (time.perf_counter() - t))
    ratios = sorted(x / y for x, y in zip(ms["off"], ms["on"]))
    q = len(ratios) // 4
    emit(benchmark="train_ab", switch=a.switch, steps=a.steps,
         off_ms_per_step=round(median(ms["off"]), 1), on_ms_per_step=round(median(ms["on"]), 1),
         ratio_median=round(median(ratios), 3),
         ratio_quartiles=[round(ratios[q], 3), round(ratios[3 * q], 3)],
         ratio_of_sums=round(sum(ms["off"]) / sum(ms["on"]), 3))


if __name__ == "__main__":
    main()
