"""Benchmark 3m: ours' training step time by batch width, and what a width's first step costs.

    python bench/step_widths.py                  # 400 steps of bucketed SST-2 batches
    python bench/step_widths.py --steps 600 --skip 40

The MiniLM classifier as `train_ab.py` and `profile_step.py` build it (CLS pooling,
`FusedAdamW`, bucketed SST-2 at max_seq_length 128, batch 32), no profiler. ``--steps``
batches of one shuffled stream (after ``--skip``) run through the train function on a
`tf.data` iterator, `fit`'s path, each timed to its loss being read (after the 10 `fit`
steps that build and trace the model, `cpu_train.ours_ready`). Prints, for each
width (tokens a row) of the full batches: how many, the first step's ms, the median and
the fastest of the later ones; then a least-squares line through the medians
(``ms = fixed + per_width * width``: ``fixed`` is what a step costs whatever its width,
the optimizer's update among it) and the first steps' extra time (first minus the
median of the later ones), also for the widths that were the widest yet when they came.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time

from common import emit, median, require_sst2


def by_width(record):
    """``{width: (first_ms, [later ms], index of the first, widest yet)}`` from ``record``
    (``[(width, rows, ms)]``), full batches only (the most rows); "widest yet" counts the
    partial batches before it too (their buffers are as wide)."""
    full = max(rows for _, rows, _ in record)
    out, widest = {}, 0
    for i, (width, rows, ms) in enumerate(record):
        if rows == full and width in out:
            out[width][1].append(ms)
        elif rows == full:
            out[width] = (ms, [], i, width > widest)
        widest = max(widest, width)
    return out


def line(points):
    """Least-squares ``(intercept, slope)`` through ``[(x, y)]``."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400, help="timed steps")
    p.add_argument("--skip", type=int, default=0, help="batches of the stream left out first")
    a = p.parse_args()
    require_sst2()

    import cpu_train as ct
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as d:
        model, ds = ct.ours_ready(ct.ours_caches(d)["train"])
        batches = list(ds.skip(a.skip).take(a.steps))
        shapes = [(int(f["token_ids"].shape[1]), int(y.shape[0])) for f, y in batches]
        feed = tf.data.Dataset.from_generator(lambda: iter(batches),
                                              output_signature=ds.element_spec).prefetch(2)
        it, train_function = iter(feed), model.make_train_function()
        record = []
        for width, rows in shapes:
            t = time.perf_counter()
            float(train_function(it)["loss"])
            record.append((width, rows, 1000 * (time.perf_counter() - t)))

    widths = by_width(record)
    print(f"{'width':>5} {'steps':>5} {'first ms':>9} {'median':>7} {'fastest':>7}  (later steps)")
    for w in sorted(widths):
        first, later, _, _ = widths[w]
        if later:
            print(f"{w:5d} {len(later) + 1:5d} {first:9.1f} {median(later):7.1f} {min(later):7.1f}")
        else:
            print(f"{w:5d} {1:5d} {first:9.1f}")
    seen = {w: v for w, v in widths.items() if len(v[1]) >= 3}
    fixed, per_width = line([(w, median(v[1])) for w, v in seen.items()])
    extra = {w: v[0] - median(v[1]) for w, v in widths.items() if v[1] and v[2] > 0}
    widest = {w: x for w, x in extra.items() if widths[w][3]}
    total = sum(ms for _, _, ms in record)
    print(f"medians of widths with >= 4 steps: ms = {fixed:.1f} + {per_width:.2f} x width")
    print(f"first steps' extra over the later median: {sum(extra.values()) / 1000:.2f} s of "
          f"{total / 1000:.1f} s ({len(extra)} widths); at the widths that were the widest "
          f"yet: {sum(widest.values()) / 1000:.2f} s ({len(widest)} widths: "
          + ", ".join(f"{w}: +{x:.0f} ms" for w, x in sorted(widest.items())) + ")")
    counts = collections.Counter(w for w, _, _ in record)
    emit(benchmark="step_widths", steps=len(record), skip=a.skip,
         fixed_ms=round(fixed, 1), ms_per_width=round(per_width, 2),
         first_extra_s=round(sum(extra.values()) / 1000, 2),
         widest_extra_s=round(sum(widest.values()) / 1000, 2), total_s=round(total / 1000, 1),
         median_ms={w: round(median(v[1]), 1) for w, v in sorted(seen.items())},
         steps_by_width=dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
