"""GPU training throughput and model FLOPs utilisation (MFU): Keras 3 vs PyTorch.

BERT-base-sized encoder (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522) with
random weights and a 2-class head; fixed-length batches of random token ids; AdamW.
Both frameworks run the same shapes in bf16 (Keras: mixed_bfloat16 policy + XLA;
PyTorch: bf16 autocast, optionally torch.compile). ``--framework kt`` is kt-pipeline's own
training path on the TensorFlow backend: the backbone with `fast_layers` (and, on a
two-core CPU, `batch_split`), `models.build_classifier`, `optim.build_optimizer`
(`FusedAdamW`, warmup and decay, clipping) and `training.compile_classifier` with
``jit_compile``, fed by `tf.data` as the reader feeds it (``token_ids`` and a boolean
``padding_mask``). ``--layers/--hidden/--heads/--ffn`` shrink the model (a CPU smoke run).

    python bench/gpu_train.py --framework keras --batch 64 --seq 128
    python bench/gpu_train.py --framework torch --batch 64 --seq 128 --compile
    python bench/gpu_train.py --framework kt --batch 128 --seq 128   # TensorFlow backend

Prints one JSON line: examples/s (median over --repeats timed windows), step time and
MFU = achieved model FLOP/s / peak bf16 dense FLOP/s (--peak-tflops, default 989 for an
H100 SXM). Model FLOPs per token for training = 3 x forward, forward = 24*L*h^2 + 4*L*s*h
(dense matmuls + attention scores/values), counted on every (padded) token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

L, H, HEADS, FFN, VOCAB = 12, 768, 12, 3072, 30522


def flops_per_example(seq: int, layers: int = L, hidden: int = H) -> float:
    fwd_per_token = 24 * layers * hidden**2 + 4 * layers * seq * hidden
    return 3.0 * fwd_per_token * seq


def run_keras(args):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    import numpy as np

    if args.bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    if args.flash:
        keras.config.enable_flash_attention()
    backbone = _backbone(args)
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((None,), dtype="int32", name="padding_mask"),
    }
    seq_out = backbone(inputs)["sequence_output"]
    x = keras.layers.Dropout(args.dropout)(seq_out[:, 0, :])
    logits = keras.layers.Dense(2, dtype="float32")(x)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-5, weight_decay=0.01, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.xla,
    )
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = {
        "token_ids": rng.integers(1000, VOCAB, (n, args.seq), dtype=np.int32),
        "segment_ids": np.zeros((n, args.seq), np.int32),
        "padding_mask": np.ones((n, args.seq), np.int32),
    }
    y = rng.integers(0, 2, (n,), dtype=np.int32)
    times = _fit_windows(args, lambda: model.fit(x, y, batch_size=args.batch, epochs=1,
                                                 verbose=0))
    return times, keras.backend.backend()


def _fit_windows(args, fit):
    """Seconds of each of ``args.repeats`` calls of ``fit`` (one timed window of
    ``args.steps`` steps each), after one untimed call that compiles and warms up."""
    fit()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fit()
        times.append(time.perf_counter() - t)
    return times


def _backbone(args):
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=args.layers, num_heads=args.heads,
        hidden_dim=args.hidden, intermediate_dim=args.ffn, max_sequence_length=512,
        dropout=args.dropout,
    )


def run_kt(args):
    """kt-pipeline's classifier, optimizer and compile on a random backbone (TensorFlow)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np
    import tensorflow as tf

    from kt_pipeline import encoders, models, optim, strategy, training

    training.set_precision(args.bf16)
    chosen = strategy.make_strategy("auto", verbose=False)
    n = args.batch * args.steps
    with chosen.strategy.scope():
        backbone = _backbone(args)
        fast = encoders.speed_up(backbone)  # as encoders.load_backbone does
        model = models.build_classifier(backbone, 2, "cls", dropout=args.dropout)
        opt = optim.build_optimizer(2e-5, warmup_steps=args.steps,
                                    total_steps=args.steps * (args.repeats + 2))
        training.compile_classifier(model, opt, jit_compile=args.xla)
    rng = np.random.default_rng(0)
    features = {"token_ids": rng.integers(1000, VOCAB, (n, args.seq), dtype=np.int32),
                "padding_mask": np.ones((n, args.seq), bool)}
    labels = rng.integers(0, 2, (n,), dtype=np.int32)
    ds = (tf.data.Dataset.from_tensor_slices((features, labels))
          .batch(args.batch, drop_remainder=True).repeat().prefetch(2))
    times = _fit_windows(args, lambda: model.fit(ds, steps_per_epoch=args.steps, epochs=1,
                                                 verbose=0))
    return times, (f"kt-pipeline on {chosen.kind} ({type(opt).__name__}, "
                   f"{sum(fast.values())} fast layers, {tf.config.list_physical_devices('GPU')!r})")


def run_torch(args):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=args.ffn, num_labels=2,
                     hidden_dropout_prob=args.dropout,
                     attention_probs_dropout_prob=args.dropout)
    model = BertForSequenceClassification(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01,
                            fused=dev == "cuda")
    step_model = torch.compile(model) if args.compile else model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (args.batch, args.seq), generator=g).to(dev)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.bf16):
            loss = step_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times, f"torch {torch.__version__}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=["keras", "kt", "torch"], required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-xla", dest="xla", action="store_false")
    p.add_argument("--flash", action="store_true",
                   help="keras.config.enable_flash_attention() (keras only)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--compile", action="store_true", help="torch.compile (torch only)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--layers", type=int, default=L)
    p.add_argument("--hidden", type=int, default=H)
    p.add_argument("--heads", type=int, default=HEADS)
    p.add_argument("--ffn", type=int, default=FFN)
    args = p.parse_args()
    run = {"keras": run_keras, "kt": run_kt, "torch": run_torch}[args.framework]
    times, backend = run(args)
    med = statistics.median(times)
    ex_s = args.batch * args.steps / med
    mfu = ex_s * flops_per_example(args.seq, args.layers, args.hidden) / (args.peak_tflops * 1e12)
    print(json.dumps({
        "framework": args.framework, "backend": backend, "batch": args.batch,
        "seq": args.seq, "bf16": args.bf16, "xla": args.xla, "compile": args.compile, "flash": getattr(args, "flash", False),
        "dropout": args.dropout,
        "examples_per_s": round(ex_s, 1), "step_ms": round(1000 * med / args.steps, 2),
        "mfu": round(mfu, 4), "windows_s": [round(t, 3) for t in times],
    }))


if __name__ == "__main__":
    main()
