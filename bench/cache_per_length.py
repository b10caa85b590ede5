"""Benchmark 5a: one cache for all max_seq_length choices vs one build per length.

    python bench/cache_per_length.py

kt-pipeline tokenises once at 512 and the reader truncates to any max_seq_length; the
old way built one cache per length (64, 128, 256, 512). Prints the wall time of both on
../shared/data/sst2/train.tsv with the packaged MiniLM tokenizer (tokenizer loaded once,
warm-up build first).
"""

import os
import tempfile
import time

from common import SST2, emit, require_sst2

LENGTHS = (64, 128, 256, 512)


def build(tok, d, name, max_length):
    from kt_pipeline import cache

    t = time.perf_counter()
    cache.build_cache(str(SST2), os.path.join(d, name), text_col="sentence", label_col="label",
                      tokenizer=tok, max_length=max_length, progress=False)
    return time.perf_counter() - t


def main():
    require_sst2()
    from kt_pipeline import encoders

    tok = encoders.load_tokenizer(None)
    with tempfile.TemporaryDirectory() as d:
        build(tok, d, "warm", 512)
        once = build(tok, d, "once", 512)
        per_length = sum(build(tok, d, f"L{n}", n) for n in LENGTHS)
    emit(benchmark="cache_per_length", lengths=list(LENGTHS), one_cache_s=round(once, 2),
         one_per_length_s=round(per_length, 2), saving=round(per_length / once, 2))


if __name__ == "__main__":
    main()
