"""Benchmark 1: full cache build rows/s vs Hugging Face `tokenizers` (tokenise only).

    python bench/cache_build.py --repeats 5

Ours: `cache.build_cache` on ../shared/data/sst2/train.tsv (read, dedupe, split,
tokenise at 512 with the MiniLM tokenizer, write TFRecords + manifest). Peer: the same
checkpoint's `tokenizer.json` loaded by HF `tokenizers`, `encode_batch` over the same
sentences (truncation 512), nothing else.

Both run once untimed-for-the-ratio (the "cold" run: ours includes one-time tracing and
tokenizer set-up in a fresh process; both are printed), then `--repeats` times
alternately (peer, ours, peer, ours, ...) so load from other processes hits both alike.
Prints medians and the ratio (target >= 1.5), and the median CPU seconds of each (all
threads of the process: less sensitive to other load than wall time).
"""

import argparse
import os
import resource
import tempfile
import time

from common import SST2, emit, median, minilm_dir, require_sst2, sst2_rows


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    c, t = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t, _cpu() - c


def make_ours():
    from kt_pipeline import cache, encoders

    tok = encoders.load_tokenizer(None)
    rows = {}

    def build(d):
        m = cache.build_cache(str(SST2), os.path.join(d, "c"), text_col="sentence",
                              label_col="label", tokenizer=tok, progress=False)
        rows["n"] = m["counts"]["rows_read"]

    def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as d:
            return timed(lambda: build(d))

    return run, rows


def make_peer(texts: list[str], threads: int):
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))
    tok.enable_truncation(512)
    tok.no_padding()

    def run() -> tuple[float, float]:
        return timed(lambda: tok.encode_batch(texts))

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    require_sst2()
    texts = [t for t, _ in sst2_rows()]
    peer, (ours, info) = make_peer(texts, a.threads), make_ours()
    cold_peer, cold_ours = peer(), ours()
    pt, ot, pc, oc = [], [], [], []
    for _ in range(a.repeats):
        (w, c), (w2, c2) = peer(), ours()
        pt.append(w), pc.append(c), ot.append(w2), oc.append(c2)
    rows = info["n"]
    ours_rps = rows / median(ot)
    peer_rps = len(texts) / median(pt)
    emit(benchmark="cache_build", rows=rows, ours_rows_per_s=round(ours_rps),
         peer_tokenize_only_rows_per_s=round(peer_rps), ratio=round(ours_rps / peer_rps, 3),
         pairwise_ratio_median=round(median([p / o for p, o in zip(pt, ot)]), 3),
         target=">= 1.5", ours_s=[round(x, 2) for x in ot], peer_s=[round(x, 2) for x in pt],
         ours_cpu_s=round(median(oc), 2), peer_cpu_s=round(median(pc), 2),
         cold_ours_s=round(cold_ours[0], 2), cold_peer_s=round(cold_peer[0], 2))


if __name__ == "__main__":
    main()
