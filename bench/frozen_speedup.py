"""Seconds per epoch of a frozen-encoder trial: slow path (encoder forward every epoch)
vs the fast path (head on cached pooled features), on the real MiniLM.

    python bench/frozen_speedup.py --rows 300 --epochs 3 --max-seq-length 64

Prints one JSON line: seconds per epoch for both paths (the first epoch, which traces
the graph, is reported separately), the one-off feature-extraction time, the speed-up,
and the final validation accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EpochTimer:
    def __init__(self):
        import keras

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.t = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.seconds.append(time.perf_counter() - cb.t)

        self.seconds: list[float] = []
        self.callback = _CB()


def run(cache_dir: str, work: str, fast: bool, args) -> dict:
    import keras_tuner

    from kt_pipeline import frozen, reader, search_config, tuning

    raw = {"search_dir": work, "preset": args.preset, "data": {"cache_dir": cache_dir},
           "tuner": {"max_epochs": args.epochs, "early_stopping_patience": None},
           "space": {"learning_rate": 1e-3, "dropout": 0.1, "max_seq_length": args.max_seq_length,
                     "batch_size": args.batch_size, "warmup_steps": 0, "freeze_body": True}}
    cfg = search_config.build_config(raw)
    manifest = reader.load_manifest(cache_dir)
    store = frozen.FeatureStore(f"{work}/features", cache_dir, args.preset, manifest,
                                verbose=False) if fast else None
    hm = tuning.ClassifierHyperModel(cfg, manifest, store)
    hp = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    model = hm.build(hp)
    extract = 0.0
    if fast:
        t = time.perf_counter()
        for split in ("train", "validation"):
            store.get(split, args.max_seq_length, "cls")
        extract = time.perf_counter() - t
    timer = EpochTimer()
    hist = hm.fit(hp, model, epochs=args.epochs, callbacks=[timer.callback], verbose=0)
    later = timer.seconds[1:] or timer.seconds
    return {"first_epoch_s": round(timer.seconds[0], 3),
            "epoch_s": round(sum(later) / len(later), 3),
            "feature_extraction_s": round(extract, 2),
            "val_accuracy": float(hist.history["val_accuracy"][-1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=os.path.join(ROOT, "kt_pipeline", "data", "sample_reviews.csv"))
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--preset", default=None, help="default: the packaged MiniLM")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=64)
    args = p.parse_args(argv)

    from kt_pipeline import cache

    work = tempfile.mkdtemp(prefix="kt-frozen-bench-")
    with open(args.input, encoding="utf-8") as f:
        lines = f.readlines()[: args.rows + 1]
    rows_csv = os.path.join(work, "rows.csv")
    with open(rows_csv, "w", encoding="utf-8") as f:
        f.writelines(lines)
    cache_dir = os.path.join(work, "cache")
    cache.build_cache(rows_csv, cache_dir, preset=args.preset, max_length=args.max_seq_length,
                      progress=False)
    slow = run(cache_dir, os.path.join(work, "slow"), False, args)
    fast = run(cache_dir, os.path.join(work, "fast"), True, args)
    out = {"rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size,
           "max_seq_length": args.max_seq_length, "cpus": os.cpu_count(),
           "slow": slow, "fast": fast,
           "speedup_per_epoch": round(slow["epoch_s"] / max(fast["epoch_s"], 1e-9), 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
