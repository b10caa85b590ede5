"""`bench/profile_step.py --concurrency`: how many ops run at once, and the idle edges of
each step, from a profiler trace (an XSpace built here with known overlaps)."""

import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
profile_step = pytest.importorskip("profile_step")
xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")

MS = 10**9  # picoseconds in a millisecond


def _space(threads: dict, calls: list):
    """An XSpace whose executor threads ran ``threads`` ({line: [(start_ms, end_ms, name)]})
    inside traced-function calls ``calls`` ([(start_ms, end_ms)], the Python line)."""
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    ids = {}

    def meta(name):
        if name not in ids:
            ids[name] = len(ids) + 1
            plane.event_metadata[ids[name]].name = name
        return ids[name]

    for line_name, events in [("python", [(a, b, "multi_step_on_iterator") for a, b in calls])] + [
            (f"tf_Compute/{k}", v) for k, v in threads.items()]:
        line = plane.lines.add(name=line_name, timestamp_ns=0)
        for a, b, name in events:
            line.events.add(metadata_id=meta(name), offset_ps=a * MS, duration_ps=(b - a) * MS)
    return space


def test_concurrency_counts_overlaps_alone_ops_and_idle_edges():
    # Two steps. Step 1 (call 0-20 ms): ops from 2 ms; two at once 4-10, one alone 10-16.
    # Step 2 (call 25-45 ms): ops 28-40, two at once 30-36. Executor spans do not count.
    threads = {
        1: [(2, 10, "a/MatMul:_MklMatMul"), (10, 16, "a/mul:Mul"), (28, 36, "b:AddN"),
            (2, 16, "ExecutorState::Process")],
        2: [(4, 10, "c/MatMul:_MklMatMul"), (30, 40, "d:Mul")],
    }
    space = _space(threads, [(0, 20), (25, 45)])
    events = profile_step.op_events(space)
    assert [name for _, _, name in events][:2] == ["a/MatMul:_MklMatMul", "c/MatMul:_MklMatMul"]
    got = profile_step.concurrency(space, events, steps=2)
    # 2-40 ms traced: none 16-28 (12), one 2-4 + 10-16 + 28-30 + 36-40 (14), two 4-10 + 30-36 (12)
    assert got["ops_running_ms"] == {"0": 6.0, "1": 7.0, "2+": 6.0}
    assert got["alone_ms_by_type"] == {"Mul": 5.0, "_MklMatMul": 1.0, "AddN": 1.0}
    assert got["function_start_to_first_op_ms"] == 2.5  # 2 and 3 ms
    assert got["last_op_to_function_end_ms"] == 4.5  # 4 and 5 ms
    assert got["between_calls_ms"] == 5.0
    by_type, _, count = profile_step.op_times(events, steps=2)
    assert by_type["_MklMatMul"] == 7.0 and count["Mul"] == 1.0


def test_an_xla_call_counts_as_an_op_and_the_timeline_shows_each_threads_phase():
    # One step (call 0-12 ms). Thread 1: forward 0-4, an XLA call 4-10 (its fusions inside
    # do not count again), idle 10-12. Thread 2: backward 2-6, the optimizer 6-12.
    threads = {
        1: [(0, 4, "model/bert_backbone/dense/MatMul:_MklMatMul"),
            (4, 10, profile_step.XLA_CALL), (5, 9, "divide_subtract_fusion")],
        2: [(2, 6, "gradient_tape/model/bert_backbone/dense/MatMul:_MklMatMul"),
            (6, 12, "fused_adam_w/ResourceApplyAdam:ResourceApplyAdam")],
    }
    space = _space(threads, [(0, 12)])
    events = profile_step.op_events(space)
    assert [name.rsplit(":", 1)[1] for _, _, name in events] == [
        "_MklMatMul", "_MklMatMul", "XLA", "ResourceApplyAdam"]
    got = profile_step.concurrency(space, events, steps=1)
    # one 0-2 and 10-12 (4), two 2-10 (8)
    assert got["ops_running_ms"] == {"1": 4.0, "2+": 8.0}
    [rows] = profile_step.timeline(space, bin_ms=2.0)
    assert rows == ["FFXXX ", " BBOOO"]
