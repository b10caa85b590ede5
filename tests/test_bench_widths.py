"""`bench/step_widths.py`: step times grouped by batch width, and the line through them."""

import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
step_widths = pytest.importorskip("step_widths")


def test_by_width_keeps_each_widths_first_step_apart_and_flags_the_widest_yet():
    record = [(4, 32, 90.0), (6, 32, 300.0), (4, 32, 70.0), (5, 32, 80.0), (6, 32, 100.0),
              (9, 7, 50.0), (5, 32, 82.0), (4, 3, 20.0), (9, 32, 400.0)]  # (width, rows, ms)
    got = step_widths.by_width(record)
    assert got[4] == (90.0, [70.0], 0, True)
    assert got[6] == (300.0, [100.0], 1, True)
    assert got[5] == (80.0, [82.0], 3, False)  # 6 came first
    # Partial batches (7 and 3 rows) are no width's steps; the first full one at 9 is the
    # widest yet only against earlier widths, the partial batch's included.
    assert got[9] == (400.0, [], 8, False)
    assert sorted(got) == [4, 5, 6, 9]


def test_line_recovers_an_exact_line_and_a_flat_one():
    assert step_widths.line([(2, 50.0), (4, 60.0), (10, 90.0)]) == pytest.approx((40.0, 5.0))
    assert step_widths.line([(3, 7.0), (3, 9.0)]) == pytest.approx((8.0, 0.0))
