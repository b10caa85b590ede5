"""Benchmark 3k: MiniLM's matrix products alone, TensorFlow by intra-op threads vs PyTorch.

    python bench/matmul_threads.py                      # 421 rows (SST-2's mean batch)
    python bench/matmul_threads.py --rows 64,421 --rounds 5

Each product of a MiniLM layer's shapes (384x384 attention projections, 384x1536 and
1536x384 feed-forward) in its three training layouts (forward ``X @ W``, input gradient
``dY @ W^T``, weight gradient ``X^T @ dY``), timed inside one traced TensorFlow loop of
``--reps`` products (a loop of the same additions without the product is subtracted), so
Python's call overhead is not counted. TensorFlow runs in child processes with
``TF_NUM_INTRAOP_THREADS`` unset (TF's default: one per core) and set to 1, PyTorch in
another with its default threads; the children take ``--rounds`` turns in a rotating
order (the machine's speed drifts) and the median of the rounds is printed, in ms and
GFLOP/s. Not a training step: in a step two products can run at once, and the step's
own numbers are `train_ab.py --switch env --on TF_NUM_INTRAOP_THREADS=1`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import emit, median

SHAPES = ((384, 384), (384, 1536), (1536, 384))  # (K, N) of W
SIDES = {"tf default": ("tf", None), "tf intra 1": ("tf", "1"), "torch": ("torch", None)}


def _ms_each(run, reps: int) -> float:
    """Median over three calls of ``run`` (``reps`` products, already warm), ms a product."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * median(times) / reps


def _tf_times(rows: list[int], reps: int) -> dict:
    import tensorflow as tf

    def loop(shape, product):
        @tf.function
        def run():
            acc = tf.zeros(shape)
            for i in tf.range(reps):
                eps = tf.cast(i, tf.float32) * 1e-9  # a new input each time
                acc = acc + (product(eps) if product else eps)
            return acc

        run()  # trace and warm
        return _ms_each(run, reps)

    out = {}
    for m in rows:
        for k, n in SHAPES:
            x, dy = tf.random.normal((m, k)), tf.random.normal((m, n))
            w = tf.Variable(tf.random.normal((k, n)))
            cases = {"fwd": ((m, n), lambda e: tf.matmul(x + e, w)),
                     "dx": ((m, k), lambda e: tf.matmul(dy + e, w, transpose_b=True)),
                     "dw": ((k, n), lambda e: tf.matmul(x + e, dy, transpose_a=True))}
            for layout, (shape, product) in cases.items():
                ms = loop(shape, product) - loop(shape, None)
                out[f"{m}x{k}x{n} {layout}"] = ms
    return out


def _torch_times(rows: list[int], reps: int) -> dict:
    import torch

    out = {}
    for m in rows:
        for k, n in SHAPES:
            x, w, dy = torch.randn(m, k), torch.randn(k, n), torch.randn(m, n)
            cases = {"fwd": lambda: x @ w, "dx": lambda: dy @ w.t(), "dw": lambda: x.t() @ dy}
            for layout, product in cases.items():
                def run():  # each result dropped at once, not kept in a list
                    for _ in range(reps):
                        product()

                for _ in range(10):  # warm
                    product()
                out[f"{m}x{k}x{n} {layout}"] = _ms_each(run, reps)
    return out


def _run_child(side: str, a) -> dict:
    system, intra = SIDES[side]
    env = dict(os.environ)
    env.pop("TF_NUM_INTRAOP_THREADS", None)
    if intra:
        env["TF_NUM_INTRAOP_THREADS"] = intra
    argv = [sys.executable, __file__, "--child", system, "--rows", a.rows, "--reps", str(a.reps)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="421", help="comma-separated rows (tokens in a batch)")
    p.add_argument("--reps", type=int, default=100, help="products per timed loop")
    p.add_argument("--rounds", type=int, default=3, help="turns of each side")
    p.add_argument("--child", choices=["tf", "torch"], help=argparse.SUPPRESS)
    a = p.parse_args()
    rows = [int(r) for r in a.rows.split(",")]
    if a.child:
        times = (_tf_times if a.child == "tf" else _torch_times)(rows, a.reps)
        print(json.dumps(times), flush=True)
        return
    sides = list(SIDES)
    got = {side: [] for side in sides}
    for r in range(a.rounds):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            got[side].append(_run_child(side, a))
    ms = {side: {key: median([g[key] for g in runs]) for key in runs[0]}
          for side, runs in got.items()}
    print(f"{'product':22s}" + "".join(f"{s:>20s}" for s in sides) + "   ms (GFLOP/s)")
    for key in ms[sides[0]]:
        m, k, n = (int(v) for v in key.split()[0].split("x"))
        gflop = 2 * m * k * n / 1e9
        print(f"{key:22s}" + "".join(f"{ms[s][key]:>11.3f} ({gflop / ms[s][key] * 1e3:4.0f})"
                                     for s in sides))
    emit(benchmark="matmul_threads", rows=rows, reps=a.reps, rounds=a.rounds,
         ms={s: {k: round(v, 3) for k, v in ms[s].items()} for s in sides})


if __name__ == "__main__":
    main()
