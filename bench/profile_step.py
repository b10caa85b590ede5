"""Where a training step's time goes: TensorFlow's profiler, op time summed by op type.

    python bench/profile_step.py                    # 30 profiled steps after 30 warm ones
    python bench/profile_step.py --steps 50 --top 30 --names 20

The MiniLM classifier as `kt-pipeline train` builds it (CLS pooling, `FusedAdamW`,
bucketed SST-2 batches at max_seq_length 128, batch 32), the same model and batches as
`train_ab.py`. After the warm-up steps it runs ``--steps`` steps under
`tf.profiler.experimental`, then reads the trace (an XSpace protobuf) and sums each
op's duration per step by op type and, with ``--names``, by op name with the layer
number and the name's own number taken out (so the six layers' copies of one op add
up, and so do ``mul_1``...``mul_210`` of one name scope). The sums cover every
TensorFlow compute thread, so they exceed the wall time when two ops run at once; the
profiler itself slows the step by 10-20% (the wall time per step is printed too).
Prints a table, then one JSON line with the op types' milliseconds per step.

``--concurrency`` adds how many of the executor's ops run at once over the steps (ms a
step with none, one, two or more), which op types run alone, and the idle time at the
step's edges: from the traced function's start to its first op, from its last op to the
function's end, and between two calls (Python). A call of an XLA-compiled function (the
embedding table's pass, ``optim._zero_gradient_pass``) counts as one op of type ``XLA``
(the trace's ``CpuExecutable::ExecuteAsyncOnStream`` span; until stop 23 this tool left it
out, so the op beside it counted as alone).

``--timeline N`` prints N profiled steps as one row of characters per compute thread,
one per ``--bin`` ms (default 2): ``F`` forward, ``B`` backward (``gradient_tape``), ``O``
the optimizer, ``X`` an XLA call, ``.`` anything else, a space when the thread ran
nothing for most of the bin. It shows where in the step a thread waits, and for what.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import glob
import re
import sys
import tempfile
import time

from common import emit, require_sst2

LAYER = re.compile(r"_layer_\d+")
SUFFIX = re.compile(r"_\d+(?=:)")  # mul_210:Mul -> mul:Mul


def load_space(xplane_path: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    return space


XLA_CALL = "CpuExecutable::ExecuteAsyncOnStream"  # one run of an XLA-compiled function


def _thread_ops(space):
    """``(thread, start_ps, end_ps, name)`` of every op on the executor's threads.

    Only op events count (named ``name:OpType``) and XLA calls (named ``XLA_CALL:XLA``
    here); the executor's own spans (``ExecutorState::Process``, ``ParallelFor``) and the
    fusions inside an XLA call contain other events and would count twice.
    """
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's threads
                continue
            base = line.timestamp_ns * 1000
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name == XLA_CALL:
                    name += ":XLA"
                elif ":" not in name or "::" in name:
                    continue
                start = base + event.offset_ps
                yield line.name, start, start + event.duration_ps, name


def op_events(space) -> list[tuple[int, int, str]]:
    """``(start_ps, end_ps, name)`` of every op the executor's threads ran, by start
    (XLA calls as ops of type ``XLA``)."""
    return sorted((a, b, name) for _, a, b, name in _thread_ops(space))


def _calls(space) -> list[tuple[int, int]]:
    """``(start_ps, end_ps)`` of each call of the traced train function (Python's line)."""
    return sorted(
        (line.timestamp_ns * 1000 + e.offset_ps, line.timestamp_ns * 1000 + e.offset_ps
         + e.duration_ps)
        for plane in space.planes for line in plane.lines if line.name == "python"
        for e in line.events if plane.event_metadata[e.metadata_id].name.endswith("on_iterator"))


def _phase(name: str) -> str:
    if name.endswith(":XLA"):
        return "X"
    if "gradient_tape/" in name:
        return "B"
    if "adam" in name.lower():
        return "O"
    return "F" if "backbone" in name else "."


def timeline(space, bin_ms: float = 2.0, steps: int | None = None) -> list[list[str]]:
    """Per traced call (the first ``steps``; all when None), one string per compute thread:
    the phase (`_phase`) that thread spent most of each ``bin_ms`` in, or a space when it
    ran ops less than a third of it."""
    ops, size = list(_thread_ops(space)), int(bin_ms * 1e9)
    threads = sorted({t for t, _, _, _ in ops})
    out = []
    for a, b in _calls(space)[:steps]:
        rows = []
        for thread in threads:
            bins = [collections.Counter() for _ in range(-(-(b - a) // size))]
            for t, s, e, name in ops:
                if t != thread or e <= a or s >= b:
                    continue
                s, e = max(s, a), min(e, b)
                for k in range((s - a) // size, (e - a - 1) // size + 1):
                    lo = a + k * size
                    bins[k][_phase(name)] += min(e, lo + size) - max(s, lo)
            rows.append("".join(c.most_common(1)[0][0] if sum(c.values()) * 3 >= size else " "
                                for c in bins))
        out.append(rows)
    return out


def op_times(events, steps: int) -> tuple[dict, dict, dict]:
    """Milliseconds per step by op type and by op name (layers merged), and ops per step."""
    by_type, by_name, count = (collections.Counter() for _ in range(3))
    for start, end, name in events:
        ms, op_type = (end - start) / 1e9 / steps, name.rsplit(":", 1)[1]
        by_type[op_type] += ms
        by_name[SUFFIX.sub("", LAYER.sub("_layer_N", name))] += ms
        count[op_type] += 1 / steps
    return by_type, by_name, count


def concurrency(space, events, steps: int) -> dict:
    """Ms a step with 0, 1 and 2+ ops running, op types running alone, and idle edges."""
    points = sorted([(s, 1, i) for i, (s, _, _) in enumerate(events)]
                    + [(e, -1, i) for i, (_, e, _) in enumerate(events)])
    running, last = set(), points[0][0]
    busy, alone = collections.Counter(), collections.Counter()
    for t, kind, i in points:
        if t > last:
            busy[min(len(running), 2)] += t - last
            if len(running) == 1:
                alone[events[next(iter(running))][2].rsplit(":", 1)[1]] += t - last
        last = t
        (running.add if kind == 1 else running.discard)(i)
    calls = _calls(space)
    starts = [s for s, _, _ in events]
    head, tail = [], []
    for a, b in calls:
        ops = events[bisect.bisect_left(starts, a):bisect.bisect_left(starts, b)]
        if ops:
            head.append(ops[0][0] - a)
            tail.append(b - max(e for _, e, _ in ops))
    between = [c[0] - p[1] for p, c in zip(calls, calls[1:])]

    def ms(ps, n=steps):
        return round(ps / 1e9 / max(n, 1), 2)

    return {"ops_running_ms": {str(k) if k < 2 else "2+": ms(v) for k, v in sorted(busy.items())},
            "alone_ms_by_type": {k: ms(v) for k, v in alone.most_common(8)},
            "function_start_to_first_op_ms": ms(sum(head), len(head)),
            "last_op_to_function_end_ms": ms(sum(tail), len(tail)),
            "between_calls_ms": ms(sum(between), len(between))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="profiled steps")
    p.add_argument("--warmup", type=int, default=30, help="steps run before profiling")
    p.add_argument("--top", type=int, default=25, help="op types to list")
    p.add_argument("--names", type=int, default=0, help="op names to list (layers merged)")
    p.add_argument("--concurrency", action="store_true",
                   help="also how many ops run at once, and the idle time at the step's edges")
    p.add_argument("--timeline", type=int, default=0, metavar="N",
                   help="also print N profiled steps as each thread's phase per --bin ms")
    p.add_argument("--bin", type=float, default=2.0, help="ms per character of --timeline")
    a = p.parse_args()
    require_sst2()

    import cpu_train as ct
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as d:
        step = ct.ours_train_step(ct.ours_caches(d)["train"])
        for _ in range(a.warmup):
            step()
        logdir = f"{d}/profile"
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        wall_ms = 1000 * (time.perf_counter() - t) / a.steps
        tf.profiler.experimental.stop()
        traces = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        if not traces:
            sys.exit(f"TensorFlow's profiler wrote no trace under {logdir}")
        space = load_space(traces[0])
        events = op_events(space)
        by_type, by_name, count = op_times(events, a.steps)
        overlap = concurrency(space, events, a.steps) if a.concurrency else None
        rows = timeline(space, a.bin, a.timeline) if a.timeline else []

    total = sum(by_type.values())
    print(f"{a.steps} steps: {wall_ms:.1f} ms a step (wall, profiled), "
          f"{total:.1f} ms of op time, {sum(count.values()):.0f} ops")
    print(f"{'ms/step':>9} {'share':>6} {'ops/step':>8}  op type")
    for op, ms in by_type.most_common(a.top):
        print(f"{ms:9.2f} {100 * ms / total:5.1f}% {count[op]:8.1f}  {op}")
    if a.names:
        print(f"{'ms/step':>9}  op name (layers merged)")
        for name, ms in by_name.most_common(a.names):
            print(f"{ms:9.2f}  {name}")
    if overlap:
        print("ops running at once (ms a step):", overlap["ops_running_ms"])
        print("running alone, by op type (ms a step):", overlap["alone_ms_by_type"])
        print("idle edges (ms a step): function start to first op "
              f"{overlap['function_start_to_first_op_ms']}, last op to function end "
              f"{overlap['last_op_to_function_end_ms']}, between calls "
              f"{overlap['between_calls_ms']}")
    if rows:
        print(f"timeline, one character per {a.bin:g} ms: F forward, B backward, O optimizer, "
              "X XLA call, . other, space: idle")
        for i, step_rows in enumerate(rows):
            print(f"step {i + 1}:")
            for row in step_rows:
                print(f"  |{row}|")
    emit(benchmark="profile_step", steps=a.steps, wall_ms_per_step=round(wall_ms, 1),
         op_ms_per_step=round(total, 1),
         by_type={op: round(ms, 2) for op, ms in by_type.most_common(a.top)},
         **({"concurrency": overlap} if overlap else {}))


if __name__ == "__main__":
    main()
