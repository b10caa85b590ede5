"""Benchmarks 3 and 4: training throughput and time to accuracy, kt-pipeline vs PyTorch.

    python bench/cpu_train.py throughput --system ours --padding bucket
    python bench/cpu_train.py throughput --system ours --padding fixed
    python bench/cpu_train.py throughput --system peer --padding bucket   # group_by_length
    python bench/cpu_train.py throughput --system peer --padding fixed
    python bench/cpu_train.py tta --system ours     # wall time to 0.85 val accuracy
    python bench/cpu_train.py tta --system peer

Same checkpoint directory on both sides (the packaged all-MiniLM-L6-v2), SST-2 rows,
max_seq_length 128, batch 32, AdamW lr 5e-5 (tta: 1e-4, 10% warm-up), fp32 on CPU
(`--mixed-precision`: bfloat16 compute on both sides).
Ours: kt-pipeline's cache + reader (bucket = length bucketing; fixed = pad to 128) +
models.build_classifier + optim.build_optimizer (FusedAdamW), Keras `fit`. Peer: Hugging
Face `transformers` (PyTorch) AutoModelForSequenceClassification, torch AdamW with
fused=True (the Trainer's default for torch >= 2.8); bucket = `group_by_length`
(transformers' LengthGroupedSampler) with dynamic padding; fixed = pad to 128.
`--plain-adamw` gives both sides their unfused AdamW (the setting before stop 12);
`--stock-layers` gives ours Keras's own layer norm, GELU and dropout instead of
`kt_pipeline.fast_layers` (the setting before stop 15).
Throughput = examples/s over `--steps` timed steps after `--warmup` steps (median of
`--repeats` windows), with unpadded tokens/s and tokens per row beside it. Bucketed
windows default to 100 steps: with 30, the peer's `group_by_length` order put its
shortest batches in one window and flattered ours 1.29x (BENCHMARKS.md section 3, stop
11). Ours' bucketed windows run on one stream after `--skip` batches of it: windows
that each started a stream (stops 10-18) saw 11.3-12.1 tokens a row against the data's
13.25 and flattered ours (stop 19). `train_vs_peer.py` compares the two drift-free.
TTA = training wall time (evaluation excluded) until accuracy on 1,000 held-out rows
first reaches 0.85, evaluated every `--eval-every` steps.

Ours runs with TrainConfig's defaults (pooling, jit_compile) under the strategy `kt-pipeline
train` picks; `--pooling`, `--jit-compile`, `--static-buckets` (pad to the few
`reader.BUCKET_SIZES`, as under XLA), `--bucket-sizes` (a what-if for those sizes) and
`--one-device` (the old `OneDeviceStrategy("/cpu:0")`) try others. The result line
records them. On a shared machine, run ours and the peer back to back, alternate and
repeat, and report medians; `windows_s` also shows the least-disturbed window.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import emit, median, minilm_dir, require_sst2, sst2_rows

SEQ, BATCH = 128, 32
TRAIN_ROWS, VAL_OFFSET, VAL_ROWS = 8000, 60000, 1000


def _write_tsv(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for t, y in rows:
            f.write(f"{t}\t{y}\n")


# ---------------------------------------------------------------- ours (Keras / TF)
def ours_setup(d, lr, total_steps, warmup, a):
    import keras

    from kt_pipeline import training

    caches = ours_caches(d)
    keras.utils.set_random_seed(0)  # the peer seeds torch the same way
    training.set_precision(bool(a.mixed_precision))  # as `kt-pipeline train --mixed-precision`
    model = ours_model(lr, warmup, total_steps, a.pooling, fused=not a.plain_adamw,
                       jit_compile=a.jit_compile, one_device=a.one_device)
    return model, caches


def ours_caches(d):
    """The train and validation caches of the benchmark's SST-2 rows, built under ``d``."""
    from kt_pipeline import cache, encoders

    tok = encoders.load_tokenizer(None)
    caches = {}
    for name, rows in (("train", sst2_rows(TRAIN_ROWS)), ("val", sst2_rows(VAL_ROWS, VAL_OFFSET))):
        src = os.path.join(d, f"{name}.tsv")
        _write_tsv(rows, src)
        caches[name] = os.path.join(d, name)
        cache.build_cache(src, caches[name], text_col="sentence", label_col="label",
                          tokenizer=tok, ratios=(1.0, 0.0, 0.0), progress=False)
    return caches


def ours_model(lr, warmup, total_steps, pooling="cls", fused=True, jit_compile=False,
               one_device=False):
    """MiniLM classifier compiled as `kt-pipeline train` compiles it.

    Built under the strategy `kt-pipeline train` picks (CPU here), as the product does:
    Keras then builds the optimizer before tracing the train step, not inside it.
    """
    from kt_pipeline import encoders, models, optim, strategy, training

    chosen = strategy.make_strategy("auto", verbose=False).strategy
    if one_device:
        import tensorflow as tf

        chosen = tf.distribute.OneDeviceStrategy("/cpu:0")
    with chosen.scope():
        model = models.build_classifier(encoders.load_backbone(None), 2, pooling, dropout=0.1)
        opt = optim.build_optimizer(lr, warmup, total_steps, fused=fused)
        training.compile_classifier(model, opt, jit_compile)
    return model


def ours_data(cache_dir, padding, a, repeat=True, shuffle=True):
    from kt_pipeline import reader

    if a.bucket_sizes:  # a what-if for the reader's static bucket boundaries
        reader.BUCKET_SIZES = tuple(a.bucket_sizes)
    # As `kt-pipeline train` does: static buckets only under XLA (or when asked for).
    static = bool(a.jit_compile or a.bucket_sizes or a.static_buckets)
    return reader.make_dataset(cache_dir, "train", batch_size=BATCH, max_seq_length=SEQ,
                               padding=padding, shuffle=shuffle, seed=0, repeat=repeat,
                               drop_remainder=padding == "fixed" and repeat,
                               static_buckets=static)


def ours_ready(cache_dir, configure=None, warmup=10):
    """The product's classifier and its bucketed batches of ``cache_dir``: ``(model, ds)``,
    built and traced by ``warmup`` steps of `fit` (on their own pass over ``ds``).

    As `kt-pipeline train` sets it up (the reader's and pooling defaults of `TrainConfig`),
    seeded so that every caller gets the same weights. ``configure(model)`` runs before
    the step is traced (for settings read at trace time).
    """
    from types import SimpleNamespace

    import keras

    from kt_pipeline.config import TrainConfig

    cfg = TrainConfig()
    opts = SimpleNamespace(bucket_sizes=None, static_buckets=False, pooling=cfg.pooling,
                           jit_compile=cfg.jit_compile)
    keras.utils.set_random_seed(0)  # as ours_setup
    model = ours_model(5e-5, 100, 10_000, opts.pooling)
    if configure is not None:
        configure(model)
    ds = ours_data(cache_dir, "bucket", opts)
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)  # build, trace
    return model, ds


def ours_train_step(cache_dir, configure=None):
    """`ours_ready`'s model as ``step()``, which runs one training step (the product's
    train function on the batch iterator, as `fit` runs it) and returns its loss."""
    model, ds = ours_ready(cache_dir, configure)
    batches, train_function = iter(ds), model.make_train_function()
    return lambda: float(train_function(batches)["loss"])


def ours_fed_step(model, batches):
    """``step()`` running the product's traced train step on the next batch of
    ``batches``, fed one at a time, and returning the batch's rows and tokens (padding not
    counted). As fast as `fit`'s path, which takes the iterator inside the step: 1.001x,
    300 alternated steps (BENCHMARKS.md section 3, stop 19)."""
    import tensorflow as tf

    model.make_train_function()
    train_function = model.train_function

    def step():
        features, labels = next(batches)
        float(train_function(iter([(features, labels)]))["loss"])
        return int(labels.shape[0]), int(tf.math.count_nonzero(features["padding_mask"]))

    return step


def ours_throughput(a):
    """Windows of steps on one batch stream, after ``a.skip`` batches of it: a stream's
    first batches are short (its length buckets fill at the rate of their lengths, so the
    rare long rows wait), which `fit` windows, each on a stream of its own, measured."""
    with tempfile.TemporaryDirectory() as d:
        model, caches = ours_setup(d, 5e-5, 10_000, 100, a)
        ds = ours_data(caches["train"], a.padding, a)
        step = ours_fed_step(model, iter(ds.skip(a.skip) if a.padding == "bucket" else ds))
        return _windows(step, a)


def ours_tta(a):
    import keras

    class Stop(keras.callbacks.Callback):
        def __init__(self, val):
            super().__init__()
            self.val, self.train_s, self.t0, self.hit = val, 0.0, None, None
            self.curve = []

        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.train_s += time.perf_counter() - self.t0
            step = int(self.model.optimizer.iterations.numpy())
            if step % a.eval_every == 0:
                acc = self.model.evaluate(self.val, verbose=0, return_dict=True)["accuracy"]
                self.curve.append((step, round(self.train_s, 1), round(acc, 4)))
                if acc >= a.target:
                    self.hit = (step, self.train_s, acc)
                    self.model.stop_training = True

    total = a.max_steps
    with tempfile.TemporaryDirectory() as d:
        model, caches = ours_setup(d, 1e-4, total, total // 10, a)
        ds = ours_data(caches["train"], "bucket", a)
        val = ours_data(caches["val"], "bucket", a, repeat=False, shuffle=False)
        cb = Stop(val)
        model.fit(ds, steps_per_epoch=total, epochs=1, verbose=0, callbacks=[cb], shuffle=False)
    return cb.hit, cb.curve


# ---------------------------------------------------------------- peer (PyTorch)
def peer_setup(lr, total, warmup, plain_adamw=False):
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              get_linear_schedule_with_warmup)

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    model.train()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    # Fused, as Hugging Face's Trainer picks for torch >= 2.8 (optim="adamw_torch_fused").
    opt = torch.optim.AdamW(groups, lr=lr, eps=1e-6, fused=not plain_adamw)
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    return tok, model, opt, sched


def peer_batches(tok, rows, padding, seed=0):
    """Endless batches: group_by_length + dynamic padding, or fixed padding."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    enc = tok([t for t, _ in rows], truncation=True, max_length=SEQ)
    ids, labels = enc["input_ids"], [y for _, y in rows]
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed + epoch)
        if padding == "bucket":
            order = list(LengthGroupedSampler(BATCH, lengths=[len(x) for x in ids], generator=g))
        else:
            order = torch.randperm(len(ids), generator=g).tolist()
        for i in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            feats = [{"input_ids": ids[j]} for j in idx]
            batch = tok.pad(feats, padding="max_length" if padding == "fixed" else "longest",
                            max_length=SEQ if padding == "fixed" else None, return_tensors="pt")
            batch["labels"] = torch.tensor([labels[j] for j in idx])
            yield batch
        epoch += 1


def peer_step(model, opt, sched, batch, bf16=False):
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def peer_train_step(warmup=25, padding="bucket", plain_adamw=False, bf16=False, batches=None):
    """The peer warmed up by ``warmup`` steps on batches of another order: returns
    ``step()``, which runs one training step (its batch's padding included) from the start
    of the batch stream and returns the batch's rows and tokens (padding not counted).
    ``batches``: an iterator of ready batches instead of SST-2's (warm-up included)."""
    tok, model, opt, sched = peer_setup(5e-5, 10_000, 100, plain_adamw)
    if batches is None:
        rows = sst2_rows(TRAIN_ROWS)
        warm, it = peer_batches(tok, rows, padding, seed=1), peer_batches(tok, rows, padding)
    else:
        warm = it = batches
    for _ in range(warmup):
        peer_step(model, opt, sched, next(warm), bf16)

    def step():
        batch = next(it)
        peer_step(model, opt, sched, batch, bf16)
        return len(batch["labels"]), int(batch["attention_mask"].sum())

    return step


def peer_throughput(a):
    return _windows(peer_train_step(a.warmup, a.padding, a.plain_adamw, a.mixed_precision), a,
                    warmup=0)


def _windows(step, a, warmup=None) -> list[tuple[float, int, int]]:
    """``warmup`` (default ``a.warmup``) untimed steps, then ``a.repeats`` windows of
    ``a.steps``: (seconds, rows, tokens) of each."""
    for _ in range(a.warmup if warmup is None else warmup):
        step()
    out = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        counts = [step() for _ in range(a.steps)]
        out.append((time.perf_counter() - t, sum(r for r, _ in counts), sum(k for _, k in counts)))
    return out


def peer_tta(a):
    import torch

    tok, model, opt, sched = peer_setup(1e-4, a.max_steps, a.max_steps // 10, a.plain_adamw)
    val_rows = sst2_rows(VAL_ROWS, VAL_OFFSET)
    it = peer_batches(tok, sst2_rows(TRAIN_ROWS), "bucket")

    def accuracy():
        model.eval()
        right = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                             enabled=a.mixed_precision):
            for i in range(0, len(val_rows), 64):
                chunk = val_rows[i:i + 64]
                b = tok([t for t, _ in chunk], truncation=True, max_length=SEQ,
                        padding=True, return_tensors="pt")
                pred = model(**b).logits.argmax(-1)
                right += int((pred == torch.tensor([y for _, y in chunk])).sum())
        model.train()
        return right / len(val_rows)

    train_s, curve = 0.0, []
    for step in range(1, a.max_steps + 1):
        t = time.perf_counter()
        peer_step(model, opt, sched, next(it), a.mixed_precision)
        train_s += time.perf_counter() - t
        if step % a.eval_every == 0:
            acc = accuracy()
            curve.append((step, round(train_s, 1), round(acc, 4)))
            if acc >= a.target:
                return (step, train_s, acc), curve
    return None, curve


def _settings(a) -> dict:
    """The knobs that shaped this run (the peer has only the precision)."""
    precision = {"precision": "bf16" if a.mixed_precision else "fp32"}
    if a.system != "ours":
        return {"optimizer": "AdamW" if a.plain_adamw else "AdamW(fused=True)", **precision}
    from kt_pipeline import reader

    return {"pooling": a.pooling, "jit_compile": bool(a.jit_compile),
            "skip": a.skip if a.padding == "bucket" and a.mode == "throughput" else 0,
            "bucket_sizes": (list(a.bucket_sizes or reader.BUCKET_SIZES)
                             if a.jit_compile or a.bucket_sizes or a.static_buckets else "narrow"),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "strategy": "OneDeviceStrategy" if a.one_device else "kt-pipeline's",
            "optimizer": "AdamW" if a.plain_adamw else "FusedAdamW",
            "fast_layers": not a.stock_layers, **precision}


def main():
    from kt_pipeline.config import TrainConfig

    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["throughput", "tta"])
    p.add_argument("--system", choices=["ours", "peer"], required=True)
    p.add_argument("--padding", choices=["bucket", "fixed"], default="bucket")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per window (default 100 with buckets, 10 with fixed "
                   "padding: shorter bucketed windows see unrepresentative lengths)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default 25 with buckets, 10 with fixed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", type=int, default=500,
                   help="ours, bucketed: batches of the stream skipped before warm-up and "
                   "windows (default 500: two passes over the rows; see ours_throughput)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--target", type=float, default=0.85)
    p.add_argument("--pooling", choices=["cls", "mean"], default=defaults.pooling,
                   help="ours: classifier pooling (default: TrainConfig's)")
    p.add_argument("--jit-compile", type=int, choices=[0, 1], default=int(defaults.jit_compile),
                   help="ours: XLA-compile the train step (default: TrainConfig's)")
    p.add_argument("--bucket-sizes", type=lambda v: [int(x) for x in v.split(",")],
                   default=None, help="ours: what-if static bucket boundaries instead of "
                   "reader.BUCKET_SIZES, e.g. 8,16,24,32,40,48,56,64,96,128")
    p.add_argument("--one-device", action="store_true",
                   help="ours: build under OneDeviceStrategy('/cpu:0') (the old CPU strategy)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="both: bfloat16 compute (ours: the mixed_bfloat16 policy, as "
                   "`kt-pipeline train --mixed-precision`; peer: torch.autocast), for CPUs "
                   "with AMX/AVX-512 bf16")
    p.add_argument("--plain-adamw", action="store_true",
                   help="both: the unfused AdamW (ours: Keras's AdamW instead of "
                   "optim.FusedAdamW; peer: torch's for-loop AdamW instead of fused=True)")
    p.add_argument("--static-buckets", action="store_true",
                   help="ours: pad to reader.BUCKET_SIZES (the XLA setting) without XLA")
    p.add_argument("--stock-layers", action="store_true",
                   help="ours: Keras's layer norm, GELU and dropout, not kt_pipeline.fast_layers")
    a = p.parse_args()
    if a.stock_layers:
        from kt_pipeline import fast_layers

        os.environ[fast_layers.ENV] = "0"
    if a.steps is None:
        a.steps = 100 if a.padding == "bucket" else 10
    if a.warmup is None:
        a.warmup = 25 if a.padding == "bucket" else 10
    require_sst2()
    if a.mode == "throughput":
        windows = (ours_throughput if a.system == "ours" else peer_throughput)(a)
        emit(benchmark="train_throughput", system=a.system, padding=a.padding, seq=SEQ,
             **_settings(a), batch=BATCH, window_steps=a.steps,
             examples_per_s=round(median([r / t for t, r, _ in windows]), 2),
             tokens_per_s=round(median([k / t for t, _, k in windows])),
             tokens_per_row=round(sum(k for *_, k in windows) / sum(r for _, r, _ in windows), 2),
             windows_s=[round(t, 2) for t, *_ in windows])
    else:
        hit, curve = (ours_tta if a.system == "ours" else peer_tta)(a)
        emit(benchmark="time_to_accuracy", system=a.system, target=a.target, **_settings(a),
             reached=hit is not None, step=hit and hit[0],
             train_seconds=hit and round(hit[1], 1), accuracy=hit and round(hit[2], 4),
             curve=curve)


if __name__ == "__main__":
    main()
