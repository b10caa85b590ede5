"""Anchor memory: bounded memory, update schedule, centroid / k-means anchors, threshold."""

import numpy as np
import pytest

from kt_pipeline.anchors import AnchorMemory
from kt_pipeline.errors import ConfigError


def test_memory_keeps_last_batches_only():
    mem = AnchorMemory(memory_steps=2, anchor_every=1)
    for v in (0.0, 1.0, 2.0):
        mem.add(np.full((2, 2), v), labels=[0, 0], groups=[0, 0])
    z, _, _ = mem.contents()
    assert len(mem) == 4 and set(z[:, 0]) == {1.0, 2.0}


def test_unlimited_memory():
    mem = AnchorMemory(memory_steps=None, anchor_every=1)
    for v in range(30):
        mem.add(np.full((1, 2), float(v)), labels=[0], groups=[0])
    assert len(mem) == 30


def test_update_schedule_and_centroid():
    mem = AnchorMemory(memory_steps=10, anchor_every=3)
    mem.add(np.array([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0], [7.0, 5.0]]),
            labels=[1, 1, 2, 2], groups=[0, 0, 0, 0])
    assert not mem.maybe_update(1) and not mem.maybe_update(2)
    assert len(mem.anchors()[1]) == 0
    assert mem.maybe_update(3)
    a, y, g = mem.anchors()
    got = {int(lab): row.tolist() for row, lab in zip(a, y)}
    assert got == {1: [1.0, 1.0], 2: [6.0, 5.0]} and set(g) == {0}


def test_narrative_rows_and_small_speakers_get_no_anchor():
    mem = AnchorMemory(anchor_every=1, min_count=2)
    mem.add(np.array([[0.0], [1.0], [9.0], [4.0]]), labels=[0, 0, 1, 2], groups=[0] * 4,
            narrative=[0, 0, 0, 1])
    mem.maybe_update(1)
    _, y, _ = mem.anchors()
    assert y.tolist() == [0]  # speaker 1 has one quote; speaker 2's row is narrative


def test_kmeans_anchors_and_threshold():
    rng = np.random.default_rng(0)
    two_modes = np.concatenate([rng.normal(0, 0.01, (10, 2)), rng.normal(4, 0.01, (10, 2))])
    tight = rng.normal(10, 0.01, (10, 2))
    z = np.concatenate([two_modes, tight])
    labels = [0] * 20 + [1] * 10
    mem = AnchorMemory(anchor_every=1, k=2)
    mem.add(z, labels, [0] * 30)
    mem.maybe_update(1)
    a, y, _ = mem.anchors()
    centres = sorted(np.round(a[y == 0].mean(axis=1)).tolist())
    assert centres == [0.0, 4.0] and (y == 1).sum() == 2
    # speaker 0's anchors lie ~2.8 from its centroid: a threshold of 1 drops them
    mem = AnchorMemory(anchor_every=1, k=2, threshold=1.0)
    mem.add(z, labels, [0] * 30)
    mem.maybe_update(1)
    assert mem.anchors()[1].tolist() == [1, 1]


def test_anchors_are_per_book_and_filterable():
    mem = AnchorMemory(anchor_every=1)
    mem.add(np.array([[0.0], [0.2], [5.0], [5.2]]), labels=[0, 0, 0, 0], groups=[0, 0, 1, 1])
    mem.maybe_update(1)
    a, y, g = mem.anchors()
    got = sorted(zip(g.tolist(), a[:, 0].tolist()))
    assert [k for k, _ in got] == [0, 1]
    assert [v for _, v in got] == pytest.approx([0.1, 5.1])
    a1, _, g1 = mem.anchors(groups=[1])
    assert g1.tolist() == [1] and a1[0, 0] == pytest.approx(5.1)


@pytest.mark.parametrize("kw", [{"memory_steps": 0}, {"anchor_every": 0}, {"k": 0}])
def test_bad_settings(kw):
    with pytest.raises(ConfigError):
        AnchorMemory(**kw)
