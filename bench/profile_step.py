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
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
import time

from common import emit, require_sst2

LAYER = re.compile(r"_layer_\d+")
SUFFIX = re.compile(r"_\d+(?=:)")  # mul_210:Mul -> mul:Mul


def op_times(xplane_path: str, steps: int) -> tuple[dict, dict, dict]:
    """Milliseconds per step by op type and by op name (layers merged), and ops per step.

    Only the executor threads' op events count (named ``name:OpType``); its own spans
    (``ExecutorState::Process``, ``ParallelFor``) contain op events and would count twice.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_name, count = (collections.Counter() for _ in range(3))
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's threads
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # the executor's own spans
                    continue
                ms, op_type = event.duration_ps / 1e9 / steps, name.rsplit(":", 1)[1]
                by_type[op_type] += ms
                by_name[SUFFIX.sub("", LAYER.sub("_layer_N", name))] += ms
                count[op_type] += 1 / steps
    return by_type, by_name, count


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="profiled steps")
    p.add_argument("--warmup", type=int, default=30, help="steps run before profiling")
    p.add_argument("--top", type=int, default=25, help="op types to list")
    p.add_argument("--names", type=int, default=0, help="op names to list (layers merged)")
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
        by_type, by_name, count = op_times(traces[0], a.steps)

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
    emit(benchmark="profile_step", steps=a.steps, wall_ms_per_step=round(wall_ms, 1),
         op_ms_per_step=round(total, 1),
         by_type={op: round(ms, 2) for op, ms in by_type.most_common(a.top)})


if __name__ == "__main__":
    main()
