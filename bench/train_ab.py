"""Benchmark 3h: one of ours' speed switches off vs on, step by step on the same batches.

    python bench/train_ab.py --switch table --steps 300       # the embedding-table update
    python bench/train_ab.py --switch fast_layers --steps 300
    python bench/train_ab.py --switch allocator --steps 300   # TF's pooling CPU allocator
    python bench/train_ab.py --switch none --steps 300        # control: both sides equal
    python bench/train_ab.py --switch env --on TF_NUM_INTRAOP_THREADS=1 --steps 300

Two MiniLM classifiers as `kt-pipeline train` builds them (CLS pooling, `FusedAdamW`,
bucketed SST-2 batches at max_seq_length 128, batch 32), one with the switch off and one
with it on, each in its own process (so process-wide settings can differ too) reading
its own copy of the same shuffled batch sequence. They take turns one step at a time,
the waiting one blocked on its pipe; the first to go alternates, so both see every batch
width and every phase of this machine's drifting speed. Each step is timed to its loss
being read. Prints the median ms per step of each, the median and quartiles of the
per-batch ratio off/on (> 1: the switch makes training faster), the ratio of the summed
times, and each side's cores busy (CPU time over the wall time of its steps). With
`--switch none` the two sides are identical: its spread is the resolution. Windowed A/Bs
(`layers_ab.py`) spread 0.86-1.17 per 25-step window on this machine kind; this one
resolves about 1% with 300 steps.

Switches: `table`: `FusedAdamW.table_min_rows` (off: the word embedding's update made
dense at the end of the step); `fast_layers`: `KT_PIPELINE_FAST_LAYERS` (off: KerasHub's
stock layer norm, GELU, dropout and full last layer); `allocator`:
`TF_CPU_ALLOCATOR_USE_BFC` (off: TensorFlow's default CPU allocator, malloc per tensor);
`env`: the environment variables given with ``--on NAME=VALUE`` (repeatable) set on the
"on" side only (off: as the caller's shell has them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import turns
from common import emit, median, require_sst2

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# The switches set in the environment: variable, its value off, its value on. Both sides
# set it, so a value in the caller's shell cannot turn the "on" side off too.
SWITCH_ENV = {"fast_layers": ("KT_PIPELINE_FAST_LAYERS", "0", "1"),
              "allocator": ("TF_CPU_ALLOCATOR_USE_BFC", "false", "true")}


def _child(switch: str, side: str, cache_dir: str):
    """One side: build, trace and warm up, then serve steps (`turns.serve`)."""
    import cpu_train as ct

    def configure(model):
        if switch == "table" and side == "off":
            model.optimizer.table_min_rows = 1 << 62  # read when the step is traced

    turns.serve(ct.ours_train_step(cache_dir, configure), warmup=5)


def _spawn(switch: str, side: str, cache_dir: str, on_env: dict) -> turns.Side:
    env = dict(os.environ)
    if switch in SWITCH_ENV:
        name, off, on = SWITCH_ENV[switch]
        env[name] = off if side == "off" else on
    if side == "on":
        env.update(on_env)
    return turns.Side(side, [sys.executable, __file__, "--switch", switch, "--child", side,
                             "--cache", cache_dir], env)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--switch", choices=["table", "fast_layers", "allocator", "env", "none"],
                   required=True)
    p.add_argument("--on", action="append", default=[], metavar="NAME=VALUE",
                   help="with --switch env: an environment variable of the 'on' side")
    p.add_argument("--steps", type=int, default=300, help="timed steps of each side")
    p.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return _child(a.switch, a.child, a.cache)
    on_env = dict(x.split("=", 1) for x in a.on if "=" in x)
    if (a.switch == "env") != bool(on_env) or len(on_env) != len(a.on):
        p.error("--switch env takes one or more --on NAME=VALUE, and only it does")
    require_sst2()

    import cpu_train as ct

    with tempfile.TemporaryDirectory() as d:
        cache_dir = ct.ours_caches(d)["train"]
        sides = {}
        for side in ("off", "on"):  # one at a time: start-up is not what is timed
            sides[side] = _spawn(a.switch, side, cache_dir, on_env)
        ms = {side: got[0] for side, got in turns.alternate(sides, a.steps, 1).items()}
    ratios = sorted(x / y for x, y in zip(ms["off"], ms["on"]))
    q = len(ratios) // 4
    emit(benchmark="train_ab", switch=a.switch, on_env=on_env or None, steps=a.steps,
         off_ms_per_step=round(median(ms["off"]), 1), on_ms_per_step=round(median(ms["on"]), 1),
         ratio_median=round(median(ratios), 3),
         ratio_quartiles=[round(ratios[q], 3), round(ratios[3 * q], 3)],
         ratio_of_sums=round(sum(ms["off"]) / sum(ms["on"]), 3),
         cores_busy={side: sides[side].cores_busy() for side in sides})


if __name__ == "__main__":
    main()
