"""Cluster each book's quote embeddings and score the clusters against the gold speakers.

Methods (scikit-learn): ``hdbscan`` (HDBSCAN; each noise point is its own cluster),
``bisecting_kmeans`` (k = the book's number of gold speakers, or estimated by the
silhouette score when ``k="estimate"``) and ``affinity`` (affinity propagation; points
it leaves unassigned are singletons). Metrics, computed here from the contingency
table (and tested against scikit-learn): ARI, V-measure, homogeneity, completeness,
Fowlkes-Mallows. Scores are per book, then macro-averaged over books.

The ``one_cluster`` baseline puts all of a book's quotes in one cluster: ARI 0 and
V-measure 0, yet a high Fowlkes-Mallows when one speaker dominates, which is why FMI
alone misleads.

Example:

>>> import numpy as np
>>> from kt_pipeline import clustering
>>> m = clustering.cluster_metrics([0, 0, 1, 1], [1, 1, 0, 0])
>>> round(m["ari"], 6), round(m["v_measure"], 6)
(1.0, 1.0)
>>> z = np.array([[1, 0], [1, .1], [0, 1], [.1, 1]]); y = np.array([0, 0, 1, 1])
>>> res = clustering.evaluate_books(z, y, np.zeros(4, int), methods=("bisecting_kmeans",))
>>> res["macro"]["bisecting_kmeans"]["ari"]
1.0
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from kt_pipeline.errors import ConfigError

METHODS = ("hdbscan", "bisecting_kmeans", "affinity")
METRICS = ("ari", "v_measure", "homogeneity", "completeness", "fmi")


def contingency(labels_true, labels_pred) -> np.ndarray:
    """Counts ``[n_true_classes, n_pred_clusters]``."""
    _, t = np.unique(np.asarray(labels_true), return_inverse=True)
    _, p = np.unique(np.asarray(labels_pred), return_inverse=True)
    t, p = t.reshape(-1), p.reshape(-1)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), np.float64)
    np.add.at(table, (t, p), 1.0)
    return table


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0]
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts / n
    return float(-(p * np.log(p)).sum())


def cluster_metrics(labels_true, labels_pred) -> dict:
    """ARI, V-measure, homogeneity, completeness and Fowlkes-Mallows (sklearn's conventions)."""
    c = contingency(labels_true, labels_pred)
    n = c.sum()
    if n == 0:
        return {m: 1.0 for m in METRICS}
    a, b = c.sum(axis=1), c.sum(axis=0)
    sum_sq = (c ** 2).sum()
    # Pair confusion (ordered pairs), as in sklearn.metrics.cluster.pair_confusion_matrix.
    tp = sum_sq - n
    fp = (c @ b).sum() - sum_sq
    fn = (c.T @ a).sum() - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        ari = 1.0
    else:
        ari = float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))
    h_true, h_pred = _entropy(a), _entropy(b)
    nz = c > 0
    outer = np.outer(a, b)
    mi = float((c[nz] / n * (np.log(c[nz] * n) - np.log(outer[nz]))).sum())
    mi = max(mi, 0.0)
    hom = mi / h_true if h_true else 1.0
    com = mi / h_pred if h_pred else 1.0
    v = 0.0 if hom + com == 0 else 2.0 * hom * com / (hom + com)
    pk, qk = (b ** 2).sum() - n, (a ** 2).sum() - n
    fmi = float(np.sqrt(tp / pk) * np.sqrt(tp / qk)) if tp != 0 else 0.0
    return {"ari": ari, "v_measure": float(v), "homogeneity": float(hom),
            "completeness": float(com), "fmi": fmi}


def _singletons_for_noise(pred: np.ndarray) -> np.ndarray:
    """Give every ``-1`` (noise / unassigned) point its own new cluster id."""
    pred = np.asarray(pred).copy()
    noise = pred < 0
    pred[noise] = pred.max(initial=-1) + 1 + np.arange(noise.sum())
    return pred


def estimate_k(z: np.ndarray, k_max: int = 30, seed: int = 0) -> int:
    """Number of clusters with the best silhouette score of bisecting k-means (2..k_max)."""
    from sklearn.cluster import BisectingKMeans
    from sklearn.metrics import silhouette_score

    n = len(z)
    if n < 3:
        return 1
    best, best_k = -2.0, 2
    for k in range(2, min(k_max, n - 1) + 1):
        pred = BisectingKMeans(n_clusters=k, random_state=seed).fit_predict(z)
        if len(np.unique(pred)) < 2:
            continue
        s = silhouette_score(z, pred)
        if s > best:
            best, best_k = s, k
    return best_k


def cluster(z: np.ndarray, method: str, k: int | str = "gold", n_gold: int = 1,
            seed: int = 0, min_cluster_size: int = 3) -> np.ndarray:
    """Cluster ids for the rows of ``z`` with one of :data:`METHODS`."""
    from sklearn import cluster as skc

    z = np.asarray(z, np.float64)
    n = len(z)
    if n == 0:
        return np.zeros(0, int)
    if n == 1:
        return np.zeros(1, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "hdbscan":
            pred = skc.HDBSCAN(min_cluster_size=max(2, min(min_cluster_size, n))).fit_predict(z)
        elif method == "bisecting_kmeans":
            kk = estimate_k(z, seed=seed) if k == "estimate" else (n_gold if k == "gold" else int(k))
            kk = max(1, min(kk, len(np.unique(z, axis=0))))
            pred = np.zeros(n, int) if kk == 1 else skc.BisectingKMeans(
                n_clusters=kk, random_state=seed).fit_predict(z)
        elif method == "affinity":
            pred = skc.AffinityPropagation(random_state=seed, damping=0.9, max_iter=300).fit_predict(z)
        else:
            raise ConfigError(f"clustering method {method!r}: expected one of {', '.join(METHODS)}")
    return _singletons_for_noise(pred)


def _normalize(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def scored_books(labels, groups) -> tuple:
    """``(groups with 2+ gold speakers, names... skipped)``: a book with one speaker has
    nothing to cluster (any single cluster scores ARI 1, and so would inflate the macro)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    keep, skipped = [], []
    for g in np.unique(groups):
        (keep if len(np.unique(labels[groups == g])) >= 2 else skipped).append(g)
    return keep, skipped


def macro(per_book: dict) -> dict:
    """Mean of each method's metrics over books."""
    methods = sorted({m for book in per_book.values() for m in book})
    return {m: {k: float(np.mean([b[m][k] for b in per_book.values() if m in b]))
                for k in METRICS} for m in methods}


def evaluate_books(embeddings, labels, groups, methods: Sequence[str] = METHODS,
                   k: int | str = "gold", normalize: bool = True, seed: int = 0,
                   group_names=None) -> dict:
    """Cluster every book's embeddings with each method; ``{"per_book", "macro", "skipped"}``.

    ``group_names`` maps group ids to the names used as keys (default: the ids). Books
    with fewer than two gold speakers are not scored (``skipped`` names them).
    """
    z = np.asarray(embeddings, np.float64)
    if normalize and len(z):
        z = _normalize(z)
    labels, groups = np.asarray(labels), np.asarray(groups)
    keep, skipped = scored_books(labels, groups)
    per_book = {}
    for g in keep:
        rows = np.flatnonzero(groups == g)
        gold = labels[rows]
        name = _name(g, group_names)
        n_gold = len(np.unique(gold))
        per_book[name] = {
            m: {**cluster_metrics(gold, cluster(z[rows], m, k, n_gold, seed)),
                "n": int(len(rows)), "speakers": n_gold}
            for m in methods
        }
    return {"per_book": per_book, "macro": macro(per_book),
            "skipped": [_name(g, group_names) for g in skipped]}


def _name(g, group_names) -> str:
    return str(group_names[g]) if group_names is not None else str(g)


def one_cluster_baseline(labels, groups, group_names=None) -> dict:
    """Scores of the answer "one cluster per book" (same structure as evaluate_books)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    keep, skipped = scored_books(labels, groups)
    per_book = {}
    for g in keep:
        gold = labels[groups == g]
        name = _name(g, group_names)
        per_book[name] = {"one_cluster": {**cluster_metrics(gold, np.zeros(len(gold), int)),
                                          "n": int(len(gold)), "speakers": len(np.unique(gold))}}
    return {"per_book": per_book, "macro": macro(per_book),
            "skipped": [_name(g, group_names) for g in skipped]}


def format_table(results: dict, title: str = "") -> str:
    """Macro scores as a fixed-width table, one row per (system, method)."""
    lines = [title] if title else []
    lines.append(f"{'system':<12} {'method':<17}" + "".join(f"{m:>13}" for m in METRICS))
    for system, res in results.items():
        for method, scores in res["macro"].items():
            lines.append(f"{system:<12} {method:<17}" + "".join(f"{scores[m]:>13.4f}" for m in METRICS))
    return "\n".join(lines)
