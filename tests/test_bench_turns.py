"""`bench/turns.py`, the turn-taking harness of the A/B benchmarks: each side's steps come
back timed, and its cores-busy figure (CPU time over wall time of its steps) tells a side
that computes from one that waits.
"""

import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
turns = pytest.importorskip("turns")

# A child serving steps of 30 ms that either compute on one thread or sleep.
_CHILD = """
import sys, time
sys.path.insert(0, {bench!r})
import turns

def spin():
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass
    return 1

def sleep():
    time.sleep(0.03)
    return 2

turns.serve(spin if sys.argv[1] == "spin" else sleep)
"""


def _side(kind: str) -> "turns.Side":
    return turns.Side(kind, [sys.executable, "-c", _CHILD.format(bench=str(BENCH)), kind])


def test_alternate_times_steps_and_counts_busy_cores():
    sides = {"spin": _side("spin"), "sleep": _side("sleep")}
    got = turns.alternate(sides, steps=6, chunk=2)

    for name, value in (("spin", 1), ("sleep", 2)):
        ms, outs = got[name]
        assert outs == [value] * 6
        assert len(ms) == 6 and all(m >= 29 for m in ms)
    # One spinning thread keeps one core busy; a sleeping step keeps none (loose bounds: the
    # CI machine is shared).
    assert 0.7 <= sides["spin"].cores_busy() <= 1.1
    assert sides["sleep"].cores_busy() <= 0.2
