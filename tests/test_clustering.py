"""Clustering metrics against scikit-learn; per-book evaluation and baselines."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from kt_pipeline import clustering
from kt_pipeline.errors import ConfigError


def sklearn_metrics(t, p):
    h, c, v = skm.homogeneity_completeness_v_measure(t, p)
    return {"ari": skm.adjusted_rand_score(t, p), "v_measure": v, "homogeneity": h,
            "completeness": c, "fmi": skm.fowlkes_mallows_score(t, p)}


labelings = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 5), min_size=n, max_size=n),
    st.lists(st.integers(-1, 7), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(labelings)
def test_metrics_match_sklearn(pair):
    t, p = pair
    ours, ref = clustering.cluster_metrics(t, p), sklearn_metrics(t, p)
    for k in clustering.METRICS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k


@pytest.mark.parametrize("t,p", [([0, 0, 0], [0, 0, 0]), ([0, 1, 2], [0, 1, 2]),
                                 ([0, 0, 1, 1], [0, 0, 0, 0]), ([0, 0, 0, 0], [0, 1, 2, 3]),
                                 ([5], [2])])
def test_edge_cases_match_sklearn(t, p):
    ours, ref = clustering.cluster_metrics(t, p), sklearn_metrics(t, p)
    for k in clustering.METRICS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (4, 5))
    y = np.repeat(np.arange(4), [30, 12, 8, 6])
    z = centres[y] + rng.normal(0, 0.3, (len(y), 5))
    return z, y


@pytest.mark.parametrize("method", clustering.METHODS)
def test_well_separated_speakers_are_recovered(method):
    z, y = blobs()
    pred = clustering.cluster(z, method, k="gold", n_gold=4)
    assert skm.adjusted_rand_score(y, pred) > 0.9


def test_estimated_k_and_noise_singletons():
    z, y = blobs(1)
    assert clustering.estimate_k(z) == 4
    pred = clustering._singletons_for_noise(np.array([0, -1, -1, 1]))
    assert len(set(pred.tolist())) == 4 and pred[0] == 0 and pred[3] == 1
    with pytest.raises(ConfigError):
        clustering.cluster(z, "dbscan")


def test_evaluate_books_is_per_book_then_macro():
    z1, y1 = blobs(2)
    z2 = np.random.default_rng(3).normal(size=(20, 5))  # no structure
    y2 = np.arange(20) % 3
    z = np.concatenate([z1, z2])
    y = np.concatenate([y1, y2])
    g = np.array([0] * len(y1) + [1] * len(y2))
    res = clustering.evaluate_books(z, y, g, methods=("bisecting_kmeans",), group_names=["A", "B"])
    a = res["per_book"]["A"]["bisecting_kmeans"]
    b = res["per_book"]["B"]["bisecting_kmeans"]
    assert a["ari"] > 0.9 and a["speakers"] == 4 and b["n"] == 20
    assert res["macro"]["bisecting_kmeans"]["ari"] == pytest.approx((a["ari"] + b["ari"]) / 2)


def test_one_cluster_baseline_shows_why_fmi_misleads():
    y = np.array([0] * 40 + [1] * 5 + [2] * 5)
    res = clustering.one_cluster_baseline(y, np.zeros(len(y), int))
    m = res["macro"]["one_cluster"]
    assert m["ari"] == 0.0 and m["v_measure"] == 0.0 and m["completeness"] == 1.0
    assert m["fmi"] == pytest.approx(skm.fowlkes_mallows_score(y, np.zeros(len(y)))) and m["fmi"] > 0.6
    table = clustering.format_table({"one_cluster": res})
    assert "one_cluster" in table and "fmi" in table


def test_a_one_speaker_book_is_not_scored():
    """A book with one speaker has nothing to cluster: any one cluster scores ARI 1 there,
    which lifted the macro of every system (one_cluster's ARI is 0, as the README says)."""
    z1, y1 = blobs(2)
    y = np.concatenate([y1, np.zeros(8, int)])
    z = np.concatenate([z1, np.random.default_rng(1).normal(size=(8, z1.shape[1]))])
    g = np.array([0] * len(y1) + [1] * 8)
    one = clustering.one_cluster_baseline(y, g, ["A", "Solo"])
    assert one["macro"]["one_cluster"]["ari"] == 0.0 and one["skipped"] == ["Solo"]
    res = clustering.evaluate_books(z, y, g, methods=("bisecting_kmeans",),
                                    group_names=["A", "Solo"])
    assert set(res["per_book"]) == {"A"} and res["skipped"] == ["Solo"]
    ari = res["per_book"]["A"]["bisecting_kmeans"]["ari"]
    assert res["macro"]["bisecting_kmeans"]["ari"] == ari
