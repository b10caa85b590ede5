"""Loss terms on hand-computable batches (expected values by numpy loops) and stability."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import losses

EPS = losses.EPS


def np_dist(a, b):
    return float(np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).sum() + EPS))


def smax(xs, t):
    xs = np.asarray(xs, float)
    m = xs.max()
    return m + t * np.log(np.exp((xs - m) / t).sum())


def soft_hinge(x, t):
    return t * np.logaddexp(0.0, x / t)


def np_anchor_loss(z, y, g, narr, w, margin, mu_p, mu_n, anchors=None, al=None, ag=None, t=0.1,
                   positives="hardest"):
    """Reference: the module docstring's formulas with explicit loops."""
    n = len(z)
    act = [not narr[i] for i in range(n)]
    vals, ws = [], []
    for i in range(n):
        if not act[i]:
            continue
        P = [j for j in range(n) if j != i and act[j] and g[j] == g[i] and y[j] == y[i]]
        N = [k for k in range(n) if act[k] and g[k] == g[i] and y[k] != y[i]]
        if not P:
            continue
        dp = [np_dist(z[i], z[j]) for j in P]
        dn = [np_dist(z[i], z[k]) for k in N]
        near_n = -smax([-x for x in dn], t) if N else 0.0
        if not N:
            push = 0.0
        elif positives == "hardest":
            push = soft_hinge(margin + smax(dp, t) - near_n, t)
        else:  # each positive against the nearest negatives: T log(1 + sum_n exp(...))
            push = np.mean([t * np.log1p(sum(np.exp((margin + p - x) / t) for x in dn))
                            for p in dp])
        vals.append(mu_p * np.mean(dp) + mu_n * push)
        ws.append(w[i])
    in_batch = float(np.dot(vals, ws) / sum(ws)) if ws else 0.0
    anchor = 0.0
    if anchors is not None:
        vals, ws = [], []
        for i in range(n):
            own = [a for a in range(len(al)) if ag[a] == g[i] and al[a] == y[i]]
            other = [a for a in range(len(al)) if ag[a] == g[i] and al[a] != y[i]]
            if not act[i] or not own:
                continue
            pull = min(np_dist(z[i], anchors[a]) for a in own)
            dn = [-np_dist(z[i], anchors[b]) for b in other]
            push = soft_hinge(margin + pull + smax(dn, t), t) if other else 0.0
            vals.append(mu_p * pull + mu_n * push)
            ws.append(w[i])
        anchor = float(np.dot(vals, ws) / sum(ws)) if ws else 0.0
    return in_batch, anchor


def batch(seed=0, n=8, dim=3):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim)).astype("float32")
    y = rng.integers(0, 3, n)
    g = rng.integers(0, 2, n)
    narr = rng.random(n) < 0.2
    w = rng.uniform(0.5, 2.0, n).astype("float32")
    return z, y, g, narr, w


def test_docstring_batch_by_hand():
    # pull: both positives at distance 1; the push terms are ~0 (negatives far enough)
    z = np.array([[0, 0], [1, 0], [0, 3]], "float32")
    out = losses.anchor_contrastive(z, [0, 0, 1], [0, 0, 0], margin=1.0, softness=0.01)
    assert float(out["in_batch"]) == pytest.approx(1.0, abs=1e-5)
    # one positive and one negative each: push = soft_hinge(margin + d_p - d_n);
    # margin 3: i=0 -> 3 + 1 - 3 = 1, i=1 -> 3 + 1 - sqrt(10); softness 1e-3 ~ relu
    out = losses.anchor_contrastive(z, [0, 0, 1], [0, 0, 0], margin=3.0, mu_p=0.0, softness=1e-3)
    assert float(out["in_batch"]) == pytest.approx((1.0 + 4 - np.sqrt(10)) / 2, abs=1e-4)
    # with softness T: T * log(1 + exp(x / T)), here for x = 0 it is T * log 2
    z = np.array([[0, 0], [1, 0], [0, 2]], "float32")
    out = losses.anchor_contrastive(z[[0, 1]][:, :], [0, 0], [0, 0], mu_p=0.0)
    assert float(out["in_batch"]) == 0.0  # no negatives: no push
    out = losses.anchor_contrastive(np.array([[0, 0], [1, 0], [-1, 0]], "float32"), [0, 0, 1],
                                    [0, 0, 0], margin=0.0, mu_p=0.0, softness=0.5)
    # i=0: d_p = 1, d_n = 1 -> x = 0 -> 0.5 log 2; i=1: d_p = 1, d_n = 2 -> x = -1
    expected = (0.5 * np.log(2) + 0.5 * np.log1p(np.exp(-2))) / 2
    assert float(out["in_batch"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["pos_dist"]) == pytest.approx(1.0, abs=1e-5)
    assert float(out["neg_dist"]) == pytest.approx((1 + 2 + 1 + 2) / 4, abs=1e-5)


def test_smooth_max_tends_to_max():
    d = tf.constant([[1.0, 3.0, 2.0]])
    mask = tf.constant([[True, False, True]])
    assert float(losses.smooth_max(d, mask, 1e-3)[0]) == pytest.approx(2.0, abs=1e-3)
    assert float(losses.smooth_max(d, mask, 1.0)[0]) == pytest.approx(smax([1.0, 2.0], 1.0))


@pytest.mark.parametrize("seed", range(4))
def test_in_batch_matches_reference(seed):
    z, y, g, narr, w = batch(seed)
    out = losses.anchor_contrastive(z, y, g, narr, w, margin=0.7, sigma=1.0, mu_p=0.3, mu_n=1.5)
    ref, _ = np_anchor_loss(z, y, g, narr, w, 0.7, 0.3, 1.5)
    assert float(out["in_batch"]) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_each_positive_push_matches_reference(seed):
    z, y, g, narr, w = batch(seed)
    for t in (0.1, 1.0):
        out = losses.anchor_contrastive(z, y, g, narr, w, margin=0.7, mu_p=0.3, mu_n=1.5,
                                        softness=t, positives="each")
        ref, _ = np_anchor_loss(z, y, g, narr, w, 0.7, 0.3, 1.5, t=t, positives="each")
        assert float(out["in_batch"]) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_each_positive_push_by_hand():
    # i=0: positives at 1 and 2, one negative at 3; margin 1, T -> 0: relu(1+1-3) + relu(1+2-3) = 0
    # margin 2.5: (0.5 + 1.5) / 2 = 1 per positive on average; "hardest" would give 1.5
    z = np.array([[0, 0], [1, 0], [-2, 0], [0, 3]], "float32")
    kw = dict(mu_p=0.0, softness=1e-3, sigma=1.0)
    each = losses.anchor_contrastive(z[:, :], [0, 0, 0, 1], [0] * 4, margin=2.5,
                                     positives="each", **kw)
    hard = losses.anchor_contrastive(z[:, :], [0, 0, 0, 1], [0] * 4, margin=2.5,
                                     positives="hardest", **kw)
    # per example (i=0,1,2; i=3 has no positive):
    # i=0: d_p {1, 2}, d_n 3 -> each (0.5+1.5)/2 = 1, hardest 1.5
    # i=1: d_p {1, 3}, d_n sqrt(10) -> each mean(relu(3.5-3.162), relu(5.5-3.162)), hardest 5.5-3.162
    # i=2: d_p {2, 3}, d_n sqrt(13) -> each mean(4.5-3.606, 5.5-3.606), hardest 5.5-3.606
    r10, r13 = np.sqrt(10), np.sqrt(13)
    e = [1.0, (3.5 - r10 + 5.5 - r10) / 2, (4.5 - r13 + 5.5 - r13) / 2]
    h = [1.5, 5.5 - r10, 5.5 - r13]
    assert float(each["in_batch"]) == pytest.approx(np.mean(e), abs=1e-3)
    assert float(hard["in_batch"]) == pytest.approx(np.mean(h), abs=1e-3)
    with pytest.raises(Exception, match="positives"):
        losses.anchor_contrastive(z, [0, 0, 0, 1], [0] * 4, positives="all")


@pytest.mark.parametrize("seed", range(3))
def test_anchor_terms_and_sigma(seed):
    z, y, g, narr, w = batch(seed)
    rng = np.random.default_rng(seed + 10)
    anchors = rng.normal(size=(7, 3)).astype("float32")
    al = np.array([0, 0, 1, 2, 0, 1, 2])
    ag = np.array([0, 0, 0, 0, 1, 1, 1])
    kw = dict(margin=0.5, mu_p=1.0, mu_n=2.0, anchors=anchors, anchor_labels=al, anchor_groups=ag)
    ref_b, ref_a = np_anchor_loss(z, y, g, narr, w, 0.5, 1.0, 2.0, anchors, al, ag)
    for sigma in (0.0, 0.3, 1.0):
        out = losses.anchor_contrastive(z, y, g, narr, w, sigma=sigma, **kw)
        if sigma < 1:
            assert float(out["anchor"]) == pytest.approx(ref_a, rel=1e-5, abs=1e-6)
        assert float(out["loss"]) == pytest.approx(sigma * ref_b + (1 - sigma) * ref_a, rel=1e-5, abs=1e-6)


def test_inverse_frequency_weights_change_the_mean():
    z = np.array([[0, 0], [1, 0], [0, 2], [0, 4]], "float32")
    y, g = [0, 0, 1, 1], [0] * 4
    even = float(losses.anchor_contrastive(z, y, g, mu_n=0.0)["loss"])
    assert even == pytest.approx((1 + 1 + 2 + 2) / 4, abs=1e-5)
    heavy = float(losses.anchor_contrastive(z, y, g, weights=[1, 1, 3, 3], mu_n=0.0)["loss"])
    assert heavy == pytest.approx((1 + 1 + 6 + 6) / 8, abs=1e-5)


def test_other_books_are_neither_positive_nor_negative():
    z = np.array([[0, 0], [1, 0], [0, 0.1]], "float32")
    # example 2 has speaker 0 but lives in book 1: no positive for it, no negative for 0/1
    out = losses.anchor_contrastive(z, [0, 0, 0], [0, 0, 1], margin=5.0)
    assert float(out["in_batch"]) == pytest.approx(1.0, abs=1e-5)  # pull only; no negatives


def np_supcon(z, y, g, narr, t):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, vals = len(z), []
    for i in range(n):
        if narr[i]:
            continue
        A = [a for a in range(n) if a != i and not narr[a] and g[a] == g[i]]
        P = [p for p in A if y[p] == y[i]]
        if not P:
            continue
        lse = np.log(sum(np.exp(z[i] @ z[a] / t) for a in A))
        vals.append(-np.mean([z[i] @ z[p] / t - lse for p in P]))
    return float(np.mean(vals)) if vals else 0.0


@pytest.mark.parametrize("seed", range(3))
def test_supcon_matches_reference(seed):
    z, y, g, narr, _ = batch(seed)
    out = losses.supcon(z, y, g, narr, temperature=0.2)
    assert float(out["loss"]) == pytest.approx(np_supcon(z, y, g, narr, 0.2), rel=1e-4, abs=1e-5)


def test_total_loss_is_bce_plus_lambda_contrastive():
    z, y, g, narr, w = batch(1)
    logits = np.linspace(-3, 3, len(y)).astype("float32")
    p = 1 / (1 + np.exp(-logits))
    bce = -np.mean(narr * np.log(p) + (1 - narr) * np.log(1 - p))
    out = losses.total_loss(z, logits, y, g, narr, kind="supcon", lam=0.5, temperature=0.3)
    assert float(out["bce"]) == pytest.approx(bce, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(bce + 0.5 * float(out["contrastive"]), rel=1e-5)


def _grads(kind, z, y, g, narr, **kw):
    zv = tf.Variable(np.asarray(z, "float32"))
    logits = tf.Variable(np.zeros(len(y), "float32"))
    with tf.GradientTape() as tape:
        out = losses.total_loss(zv, logits, y, g, narr, kind=kind, **kw)
    grads = tape.gradient(out["loss"], [zv, logits])
    return out, grads


STABILITY = {
    "no_positives": ([[0, 0], [1, 1], [2, 2]], [0, 1, 2], [0, 0, 0], [0, 0, 0]),
    "one_speaker": ([[0, 0], [0, 0], [1, 1]], [3, 3, 3], [0, 0, 0], [0, 0, 0]),
    "all_narrative": ([[0, 0], [1, 1]], [0, 0], [0, 0], [1, 1]),
    "single_example": ([[0.5, 0.5]], [0], [0], [0]),
    "huge_distances": ([[1e30, -1e30], [-1e30, 1e30], [3e30, 0], [-3e30, 1]], [0, 0, 1, 1],
                       [0, 0, 0, 0], [0, 0, 0, 0]),
    "identical_points": ([[1, 1]] * 4, [0, 0, 1, 1], [0] * 4, [0] * 4),
}


@pytest.mark.parametrize("case", sorted(STABILITY))
@pytest.mark.parametrize("kind", ["anchor", "anchor_each", "supcon"])
def test_finite_loss_and_gradients(case, kind):
    z, y, g, narr = STABILITY[case]
    kw = {"temperature": 0.05} if kind == "supcon" else {
        "sigma": 0.5, "anchors": np.array([[0.0, 0.0], [5e30, 5e30]], "float32"),
        "anchor_labels": [0, 1], "anchor_groups": [0, 0],
        "positives": "each" if kind == "anchor_each" else "hardest"}
    kind = "supcon" if kind == "supcon" else "anchor"
    out, grads = _grads(kind, z, y, g, narr, **kw)
    for k, v in out.items():
        assert np.isfinite(float(v)), (case, k)
    for gr in grads:
        assert np.all(np.isfinite(gr.numpy())), case


def test_degenerate_batches_contribute_zero():
    for case in ("no_positives", "all_narrative", "single_example"):
        z, y, g, narr = STABILITY[case]
        assert float(losses.anchor_contrastive(z, y, g, narr)["loss"]) == 0.0
        assert float(losses.supcon(z, y, g, narr)["loss"]) == 0.0


def test_distance_is_exact_and_scale_safe():
    d = losses.pairwise_distances([[0, 0], [1e30, 0]], [[3, 4], [0, 0]]).numpy()
    assert d[0, 0] == pytest.approx(5.0)
    assert d[1, 1] == pytest.approx(1e30, rel=1e-6)
    for a, b in itertools.product([0.0, 1e-20], [0.0]):
        x = tf.Variable([[a, 0.0]])
        with tf.GradientTape() as tape:
            dd = losses.pairwise_distances(x, [[b, 0.0]])
        assert np.all(np.isfinite(tape.gradient(dd, x).numpy()))
