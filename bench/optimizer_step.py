"""Benchmark 3e: one optimizer update on MiniLM's 103 trainable variables, ours vs PyTorch.

    python bench/optimizer_step.py                 # all three, ms per update
    python bench/optimizer_step.py --system ours   # FusedAdamW and Keras AdamW only

The training step's update alone, outside the model: random gradients shaped like
MiniLM's (the word embedding's as a sparse gradient of `--rows` rows, as the backward
pass gives it; the peer's dense, as Hugging Face's embedding gives it), global-norm
clipping to 1.0, weight decay 0.01 except on biases and LayerNorm. Ours: `FusedAdamW`
(the default) and Keras's `AdamW`, each inside a `tf.function`; peer: `clip_grad_norm_`
plus `torch.optim.AdamW(fused=True)`. Medians over `--repeats` updates.

The weights, slots and gradients (about 360 MB) nearly fit a large L3 cache, where
the updates run faster than inside a training step; compare the systems, not the
absolute times.
"""

from __future__ import annotations

import argparse
import os
import time

from common import emit, median

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _time(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * median(times), 2)


def shapes():
    from kt_pipeline import encoders

    backbone = encoders.load_backbone(None)
    return [(v.path, tuple(v.shape)) for v in backbone.trainable_variables]


def ours(var_shapes, rows, repeats):
    import numpy as np
    import tensorflow as tf
    import keras

    from kt_pipeline import optim

    rng = np.random.default_rng(0)
    vocab = max(s[0] for _, s in var_shapes)
    grads = []
    for _, s in var_shapes:
        if s[0] == vocab and len(s) == 2:  # the word embedding: a sparse gradient
            idx = rng.choice(vocab, rows, replace=False).astype("int32")
            vals = rng.standard_normal((rows, s[1])).astype("float32")
            grads.append(tf.IndexedSlices(tf.constant(vals), tf.constant(idx),
                                          tf.constant(s, "int64")))
        else:
            grads.append(tf.constant(rng.standard_normal(s).astype("float32") * 1e-3))
    out = {}
    for name, fused in (("FusedAdamW", True), ("keras AdamW", False)):
        variables = [keras.Variable(rng.standard_normal(s).astype("float32") * 0.02,
                                    name=p.replace("/", "_")) for p, s in var_shapes]
        opt = optim.build_optimizer(5e-5, 100, 10_000, fused=fused)
        opt.build(variables)
        out[name] = _time(_update_fn(opt, grads, variables), repeats)
    return out


def _update_fn(opt, grads, variables):
    import tensorflow as tf

    @tf.function
    def update():
        opt.apply(grads, variables)

    return update


def peer(var_shapes, rows, repeats):
    import torch

    from kt_pipeline import optim  # the same no-decay names as ours

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    vocab = max(s[0] for _, s in var_shapes)
    params, decay, no_decay = [], [], []
    for path, s in var_shapes:
        p = torch.nn.Parameter(torch.randn(s) * 0.02)
        if s[0] == vocab and len(s) == 2:  # dense, as nn.Embedding's backward gives it
            g = torch.zeros(s)
            g[torch.randperm(vocab)[:rows]] = torch.randn(rows, s[1])
        else:
            g = torch.randn(s) * 1e-3
        p.grad = g
        params.append(p)
        (no_decay if any(k in path for k in optim.NO_DECAY_NAMES) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-5, eps=1e-6, fused=True)

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return {"torch AdamW(fused=True) + clip_grad_norm_": _time(step, repeats)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=("ours", "peer", "both"), default="both")
    ap.add_argument("--rows", type=int, default=300,
                    help="rows of the embedding's sparse gradient (unique tokens in a batch)")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    var_shapes = shapes()
    n = len(var_shapes)
    results = {}
    if a.system in ("ours", "both"):
        results.update(ours(var_shapes, a.rows, a.repeats))
    if a.system in ("peer", "both"):
        results.update(peer(var_shapes, a.rows, a.repeats))
    for name, ms in results.items():
        emit(benchmark="optimizer_step", optimizer=name, variables=n,
             embedding_rows=a.rows, ms_per_update=ms, repeats=a.repeats)


if __name__ == "__main__":
    main()
