"""Benchmark 1b: peak memory of a 1M-row synthetic cache build (target < 2 GiB).

    python bench/cache_memory.py --rows 1000000

Writes a synthetic CSV (unique short review-like sentences, two labels) to a temp dir,
then builds the cache in a child process and reports the child's peak RSS
(getrusage ru_maxrss) and rows/s.
"""

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from common import emit

WORDS = ("the a film game plot acting music story was is very quite not really good bad "
         "great awful boring fun clever dull lovely tired fresh slow fast long short").split()

CHILD = """
import sys
from kt_pipeline import cache
cache.build_cache(sys.argv[1], sys.argv[2], text_col="text", label_col="label", progress=False)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    a = p.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "synthetic.csv")
        with open(src, "w", encoding="utf-8") as f:
            f.write("text,label\n")
            for i in range(a.rows):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
                f.write(f"{words} {i},{rng.randint(0, 1)}\n")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, src, os.path.join(d, "cache")], check=True)
        secs = time.perf_counter() - t
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    emit(benchmark="cache_memory", rows=a.rows, seconds=round(secs, 1),
         rows_per_s=round(a.rows / secs), peak_rss_gib=round(peak_kib / 2**20, 3),
         target="< 2 GiB")


if __name__ == "__main__":
    main()
