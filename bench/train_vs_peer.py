"""Benchmark 3j: ours vs the PyTorch peer, taking turns in chunks of steps (drift-free).

    python bench/train_vs_peer.py --steps 500 --chunk 10

Benchmark 3 (`cpu_train.py throughput`) times each system in a run of its own, minutes
apart; on a VM whose speed drifts by up to 25% within minutes, pairs of such runs spread
0.73-1.32x (BENCHMARKS.md section 3, stop 18). Here both run at once, each in its own
process with all the cores, and take turns (`turns.py`): ours runs ``--chunk`` steps
while the peer waits blocked on its pipe, then the peer, the first to go alternating.
Both see the same phases of the machine's speed.

Settings as `cpu_train.py throughput --padding bucket`: the packaged MiniLM, SST-2's first
8,000 rows, fp32, batch 32, max_seq_length 128, AdamW at 5e-5 with clipping; ours with
its narrow length buckets and `FusedAdamW` as `kt-pipeline train` builds it, the peer
with `group_by_length`, dynamic padding (timed, as there) and torch's fused AdamW.

Same rows on both sides. The peer starts at the beginning of its batch stream, so each
250-step pass is one epoch of the 8,000 rows. Ours' length buckets fill at the rate of
their lengths, so early in a stream the rare long rows wait in part-filled buckets and
the batches are shorter than the data's mean (12.4 tokens a row in the first 250 steps
against 13.25; until stop 19 `cpu_train.py` timed the first 100 batches of new streams,
11.3-12.1, which flattered ours by about 7%). Here, as in `cpu_train.py` now, ours
starts after ``--skip`` batches of its stream (default 500, where its rows hold 13.17),
and every step counts its rows and unpadded tokens. Prints each side's examples/s and
unpadded tokens/s and **ratio_tokens**, ours/peer in tokens/s (> 1: ours faster; the
same length mix on both sides), with ratio_examples (what `cpu_train.py` compares)
beside it, the tokens/s ratio in each 250-step pass and each tenth of the run (ten steps
hold batches of similar lengths, so single chunks are not compared), each side's tokens
per row, and each side's cores busy (CPU time over the wall time of its steps: 2.0 on
two cores leaves none idle; `turns.Side.cores_busy`). Ours' batches come from its reader
into the product's traced train step one at a time (counted in Python;
`cpu_train.ours_fed_step`).

Both sides first run ``--warmup`` untimed steps (default 250, one pass; the peer on
batches of another order, ours on its stream after ``--skip``, so its timed steps start
250 batches later). Until stop 24 the peer warmed up for 25 steps only, and PyTorch's
first step at each batch width it has not met costs up to 1.7 s more (its CPU kernels
are set up per shape; the peer pads each batch to its own longest row, so widths keep
coming): in a 1,000-step run the peer's steps that started a new group of 50 (the
longest batch first) took 5.2 s extra in its first 250 steps, 1.7 s in the second and
0.7-0.8 s a pass after that, while ours ran as fast from the start. Those runs' ratios
(1.27x median over 500 steps at stop 23) counted that start-up in; a run from one pass
in measures both sides as they run for the rest of a long training job.
``--warmup 25`` gives the old setting.

``--mixed-precision``: both in bfloat16 (CPUs with AMX or AVX-512 bf16).

``--widths 2,8,16,32``: synthetic batches of 32 rows of those widths instead (random ids,
the same on both sides, no padding), one of each per turn; prints each side's median ms
a step by width, to see where in the range of lengths either side wins.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import turns
from common import emit, median, require_sst2

PASS = 250  # steps of 32 rows in one pass over cpu_train's 8,000 rows


def _child(system: str, cache_dir: str, skip: int, widths: list[int], bf16: bool,
           warmup: int):
    import cpu_train as ct

    synthetic = _synthetic(system, widths) if widths else None
    if system == "peer":  # warmed up on batches of another order
        return turns.serve(ct.peer_train_step(warmup=warmup, batches=synthetic, bf16=bf16))
    from kt_pipeline import training

    training.set_precision(bf16)  # as `kt-pipeline train --mixed-precision`
    model, ds = ct.ours_ready(cache_dir, warmup=25)
    # then the step traced for batches fed one at a time, warmed up on the stream
    turns.serve(ct.ours_fed_step(model, synthetic or iter(ds.skip(skip))),
                warmup=max(5, warmup))


def _synthetic(system: str, widths: list[int]):
    """Endless batches of 32 rows of random ids, one width after another; the same ids on
    both sides ([CLS] first, [SEP] last, no padding)."""
    import itertools

    import numpy as np

    rng, out = np.random.default_rng(0), []
    for w in widths:
        ids = rng.integers(1000, 30000, size=(32, w)).astype("int32")
        ids[:, 0], ids[:, -1] = 101, 102
        labels = rng.integers(0, 2, 32).astype("int32")
        if system == "peer":
            import torch

            out.append({"input_ids": torch.tensor(ids, dtype=torch.long),
                        "attention_mask": torch.ones(32, w, dtype=torch.long),
                        "labels": torch.tensor(labels, dtype=torch.long)})
        else:
            import tensorflow as tf

            out.append(({"token_ids": tf.constant(ids), "padding_mask": tf.ones((32, w), bool)},
                        tf.constant(labels)))
    return itertools.cycle(out)


def _ratios(ours, peer, size: int) -> list[float]:
    """ours/peer in unpadded tokens/s over consecutive spans of ``size`` steps."""
    def rate(side, i):
        ms, out = side
        return sum(t for _, t in out[i:i + size]) / sum(ms[i:i + size])

    return [round(rate(ours, i) / rate(peer, i), 3) for i in range(0, len(ours[0]), size)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2 * PASS, help="timed steps of each side")
    p.add_argument("--chunk", type=int, default=10, help="steps per turn")
    p.add_argument("--skip", type=int, default=2 * PASS,
                   help="batches of ours' stream skipped before its timed steps")
    p.add_argument("--widths", type=lambda v: [int(x) for x in v.split(",")],
                   help="instead of SST-2: synthetic batches of these widths in turn, e.g. "
                   "2,8,16,32 (--chunk becomes one of each); prints ms per step by width")
    p.add_argument("--warmup", type=int, default=PASS,
                   help="untimed steps of each side first (default: one pass, so the "
                   "peer has met the batch widths; see the docstring)")
    p.add_argument("--raw", help="also write every step's ms, rows and tokens to this JSON file")
    p.add_argument("--mixed-precision", action="store_true",
                   help="both in bfloat16 (ours: the mixed_bfloat16 policy, as `kt-pipeline "
                   "train --mixed-precision`; the peer: torch.autocast), for CPUs with AMX")
    p.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return _child(a.child, a.cache, a.skip, a.widths, a.mixed_precision, a.warmup)
    if a.widths:
        a.chunk = len(a.widths)
    if a.steps < a.chunk or a.chunk < 1 or a.skip < 0 or a.warmup < 0:
        sys.exit("--steps must be at least --chunk, --chunk at least 1, --skip and --warmup "
                 "at least 0")
    require_sst2()

    import cpu_train as ct

    with tempfile.TemporaryDirectory() as d:
        cache_dir = ct.ours_caches(d)["train"]
        widths = ["--widths", ",".join(map(str, a.widths))] if a.widths else []
        sides = {s: turns.Side(s, [sys.executable, __file__, "--child", s, "--cache", cache_dir,
                                   "--skip", str(a.skip), "--warmup", str(a.warmup),
                                   *widths,
                                   *(["--mixed-precision"] if a.mixed_precision else [])])
                 for s in ("ours", "peer")}  # one at a time: start-up is not what is timed
        got = turns.alternate(sides, a.steps, a.chunk)  # ms and (rows, tokens) per step
    if a.raw:
        with open(a.raw, "w", encoding="utf-8") as f:
            json.dump(got, f)
    if a.widths:
        return _emit_widths(a, got, sides)
    busy = {s: side.cores_busy() for s, side in sides.items()}
    per_s = {s: [sum(x[j] for x in out) / (sum(ms) / 1000) for j in (0, 1)]
             for s, (ms, out) in got.items()}  # rows/s, tokens/s
    emit(benchmark="train_vs_peer", padding="bucket", seq=ct.SEQ, batch=ct.BATCH,
         precision=_precision(a), steps=a.steps, chunk=a.chunk, skip=a.skip,
         warmup=a.warmup,
         ours_examples_per_s=round(per_s["ours"][0], 1),
         peer_examples_per_s=round(per_s["peer"][0], 1),
         ours_tokens_per_s=round(per_s["ours"][1]), peer_tokens_per_s=round(per_s["peer"][1]),
         ratio_tokens=round(per_s["ours"][1] / per_s["peer"][1], 3),
         ratio_examples=round(per_s["ours"][0] / per_s["peer"][0], 3),
         ratio_tokens_per_pass=_ratios(got["ours"], got["peer"], PASS),
         ratio_tokens_per_tenth=_ratios(got["ours"], got["peer"], max(a.chunk, a.steps // 10)),
         ours_tokens_per_row=round(per_s["ours"][1] / per_s["ours"][0], 2),
         peer_tokens_per_row=round(per_s["peer"][1] / per_s["peer"][0], 2),
         ours_ms_per_step_median=round(median(got["ours"][0]), 1),
         peer_ms_per_step_median=round(median(got["peer"][0]), 1),
         ours_cores_busy=busy["ours"], peer_cores_busy=busy["peer"])


def _precision(a) -> str:
    return "bf16" if a.mixed_precision else "fp32"


def _emit_widths(a, got, sides) -> None:
    """Median ms a step of each side by batch width, peer/ours (> 1: ours faster) and each
    side's cores busy."""
    by_width = {}
    for w in a.widths:
        steps = {s: [i for i, (rows, tokens) in enumerate(got[s][1]) if tokens == rows * w]
                 for s in sides}
        o, p = (median([got[s][0][i] for i in steps[s]]) for s in ("ours", "peer"))
        by_width[w] = {"ours_ms": round(o, 1), "peer_ms": round(p, 1), "ratio": round(p / o, 3),
                       **{f"{s}_cores_busy": sides[s].cores_busy(steps[s]) for s in sides}}
    emit(benchmark="train_vs_peer_widths", batch=32, precision=_precision(a), steps=a.steps,
         by_width=by_width)


if __name__ == "__main__":
    main()
