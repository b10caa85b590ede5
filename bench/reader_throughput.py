"""Benchmark 2: the reader alone (parse, truncate, bucket, batch) at max_seq_length 128.

    python bench/reader_throughput.py --cache tfrecords/bench_sst2

Builds the SST-2 cache once if `--cache` does not hold one, then iterates the train split
with length bucketing (and, for comparison, fixed and dynamic padding), batch 32, for
`--batches` batches after a warm-up; prints examples/s (median of `--repeats`). Compare it
with `bench/cpu_train.py throughput --system ours` (target: reader >= 50x the training
step's consumption).
"""

import argparse
import time

from common import SST2, emit, median, require_sst2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="tfrecords/bench_sst2")
    p.add_argument("--batches", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    require_sst2()
    from kt_pipeline import cache, reader

    cache.ensure_cache(str(SST2), a.cache, text_col="sentence", label_col="label",
                       progress=False)
    for padding in ("bucket", "fixed", "dynamic"):
        ds = reader.make_dataset(a.cache, "train", batch_size=32, max_seq_length=128,
                                 padding=padding, shuffle=True, repeat=True)
        it = iter(ds)
        for _ in range(50):
            next(it)
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            for _ in range(a.batches):
                next(it)
            times.append(time.perf_counter() - t)
        emit(benchmark="reader", padding=padding, batch=32, max_seq_length=128,
             examples_per_s=round(32 * a.batches / median(times)))


if __name__ == "__main__":
    main()
