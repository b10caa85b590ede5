"""Benchmark 3l: ours' `model.evaluate` over bucketed SST-2 batches, seconds per pass.

    python bench/evaluate_speed.py --batches 150 --repeats 3
    KT_PIPELINE_BATCH_SPLIT=0 python bench/evaluate_speed.py     # whole batches, TF's threads

The MiniLM classifier as `kt-pipeline train` builds it, evaluated on the first
``--batches`` bucketed batches (32 rows, max_seq_length 128) of the benchmark's SST-2
rows, cached in memory, after one untimed pass. Run it with and without
`KT_PIPELINE_BATCH_SPLIT=0` in turn to see what the batch split does to evaluation and
prediction on this machine. Prints one JSON line with each pass's seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import emit, require_sst2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    require_sst2()

    import cpu_train as ct

    from kt_pipeline import batch_split, reader

    with tempfile.TemporaryDirectory() as d:
        cache_dir = ct.ours_caches(d)["train"]
        model = ct.ours_model(5e-5, 10, 100)
        ds = reader.make_dataset(cache_dir, "train", batch_size=ct.BATCH, max_seq_length=ct.SEQ,
                                 padding="bucket", shuffle=False, repeat=False)
        ds = ds.take(a.batches).cache()
        model.evaluate(ds, verbose=0)  # traced, and the cache filled
        seconds = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            model.evaluate(ds, verbose=0)
            seconds.append(round(time.perf_counter() - t, 2))
    emit(benchmark="evaluate_speed", batches=a.batches, split_parts=batch_split.parts(),
         intra_op_threads=os.environ.get("TF_NUM_INTRAOP_THREADS", "default"), seconds=seconds)


if __name__ == "__main__":
    main()
