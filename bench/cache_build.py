"""Benchmark 1: full cache build rows/s vs Hugging Face `tokenizers` (tokenise only).

    python bench/cache_build.py --repeats 3

Ours: `cache.build_cache` on ../shared/data/sst2/train.tsv (read, dedupe, split,
tokenise at 512 with the MiniLM tokenizer, write TFRecords + manifest). Peer: the same
checkpoint's `tokenizer.json` loaded by HF `tokenizers`, `encode_batch` over the same
sentences (truncation 512), nothing else. Prints medians and the ratio (target >= 1.5x).
"""

import argparse
import os
import tempfile
import time

from common import SST2, emit, median, minilm_dir, require_sst2, sst2_rows


def ours(repeats: int) -> list[float]:
    from kt_pipeline import cache, encoders

    tok = encoders.load_tokenizer(None)
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            m = cache.build_cache(str(SST2), os.path.join(d, "c"), text_col="sentence",
                                  label_col="label", tokenizer=tok, progress=False)
            times.append(time.perf_counter() - t)
    return times, m["counts"]["rows_read"]


def peer(repeats: int, texts: list[str], threads: int) -> list[float]:
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))
    tok.enable_truncation(512)
    tok.no_padding()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        tok.encode_batch(texts)
        times.append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    require_sst2()
    texts = [t for t, _ in sst2_rows()]
    pt = peer(a.repeats, texts, a.threads)
    ot, rows = ours(a.repeats)
    ours_rps = rows / median(ot)
    peer_rps = len(texts) / median(pt)
    emit(benchmark="cache_build", rows=rows, ours_rows_per_s=round(ours_rps),
         peer_tokenize_only_rows_per_s=round(peer_rps), ratio=round(ours_rps / peer_rps, 3),
         target=">= 1.5", ours_s=[round(x, 2) for x in ot], peer_s=[round(x, 2) for x in pt])


if __name__ == "__main__":
    main()
