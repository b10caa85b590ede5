"""Losses for speaker clustering: the anchor contrastive loss, SupCon, narrative BCE.

All pair terms are restricted to *non-narrative* examples of the *same book* (group):
positives share book and speaker, negatives share the book but not the speaker.

Anchor contrastive loss (per example ``i`` with weight ``w_i``; ``d`` = L2 distance;
``smax_T`` / ``smin_T`` = the smooth maximum / minimum ``T log sum exp(+-x / T)``;
``soft_hinge_T(x) = T softplus(x / T)``, which tends to ``relu(x)`` as ``T -> 0``)::

    pull_b(i) = mean_{p in P(i)} d(i, p)
    push_b(i) = soft_hinge_T(margin + smax_T{d(i, p): p in P(i)} - smin_T{d(i, n): n in N(i)})
                                                  (positives="hardest")
    push_b(i) = mean_{p in P(i)} soft_hinge_T(margin + d(i, p) - smin_T{d(i, n): n in N(i)})
                                                  (positives="each")
    pull_a(i) = min_{own anchors a} d(i, a)
    push_a(i) = soft_hinge_T(margin + pull_a(i) - smin_T{d(i, b): other-speaker anchors b})
    in_batch  = mean_i w_i (mu_p pull_b + mu_n push_b)   over i with >= 1 positive
    anchor    = mean_i w_i (mu_p pull_a + mu_n push_a)   over i whose speaker has anchors
    contrastive = sigma * in_batch + (1 - sigma) * anchor

The push terms are a smoothed batch-hard triplet loss (the hardest positive against
the hardest negative, Hermans et al. 2017) with margin epsilon = ``margin``; a push term
with no negative is 0. ``positives="each"`` instead puts *every* positive against the
(smoothly) nearest negatives and averages, which equals ``T log(1 + sum_n exp((margin +
d_ip - d_in) / T))`` per positive: the distance-and-margin form of SupCon's softmax, so
easy positives (quotes with an attribution cue) keep contributing gradient instead of
only the hardest ones (often quotes nobody could attribute). Weighted means divide by the sum of the weights of the examples
that count. Stable by construction: distances are ``m * sqrt(sum((x/m)^2) + eps)`` with
``m`` the largest absolute coordinate difference (no overflow, finite gradient at 0);
smooth max/min are shifted ``logsumexp`` over masked entries; the soft hinge is
``relu(x) + T log1p(exp(-|x| / T))``; SupCon uses a masked ``logsumexp`` and the
narrative head ``sigmoid_cross_entropy_with_logits``; an empty set of terms contributes
0 (never 0/0).

Example:

>>> import numpy as np
>>> from kt_pipeline import losses
>>> z = np.array([[0., 0.], [1., 0.], [0., 3.]], "float32")
>>> out = losses.anchor_contrastive(z, labels=[0, 0, 1], groups=[0, 0, 0], margin=1.0)
>>> round(float(out["in_batch"]), 4)   # pull 1; push ~ relu(1 + 1 - 3) = 0 for i = 0 and 1
1.0
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

EPS = 1e-12
NEG_LARGE = -1e9


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def pairwise_distances(a, b, eps: float = EPS):
    """L2 distances ``[Na, Nb]`` that are finite, with finite gradients, for any finite input.

    ``d = m * sqrt(sum((diff / m)^2) + eps)`` where ``m = max(|diff|, 1)`` (no gradient
    through ``m``): no overflow for huge embeddings and no infinite gradient at 0.

    >>> float(pairwise_distances([[0., 0.]], [[3., 4.]])[0, 0])
    5.0
    """
    a, b = _f32(a), _f32(b)
    diff = a[:, None, :] - b[None, :, :]
    m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(diff), axis=-1, keepdims=True), 1.0))
    scaled = diff / m
    return m[..., 0] * tf.sqrt(tf.reduce_sum(scaled * scaled, axis=-1) + eps)


def _masked_mean(values, mask, axis):
    """Mean of ``values`` where ``mask``; 0 where nothing is selected (never 0/0)."""
    mask = tf.cast(mask, tf.float32)
    total = tf.reduce_sum(tf.where(mask > 0, values, 0.0), axis=axis)
    count = tf.reduce_sum(mask, axis=axis)
    return total / tf.maximum(count, 1.0), count


def _weighted_mean(per_example, valid, weights):
    """``sum w_i x_i / sum w_i`` over valid ``i``; 0 when none is valid."""
    w = tf.where(valid, weights, 0.0)
    return tf.reduce_sum(w * tf.where(valid, per_example, 0.0)) / tf.maximum(tf.reduce_sum(w), EPS)


def pair_masks(labels, groups, narrative=None):
    """``(positive [B,B], negative [B,B], active [B])`` boolean masks.

    ``active`` = non-narrative; positives exclude the diagonal.
    """
    labels = tf.convert_to_tensor(labels)
    groups = tf.convert_to_tensor(groups)
    n = tf.shape(labels)[0]
    active = tf.ones([n], tf.bool) if narrative is None else tf.logical_not(
        tf.cast(narrative, tf.bool))
    both = tf.logical_and(active[:, None], active[None, :])
    same_group = tf.equal(groups[:, None], groups[None, :])
    same_label = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(n, dtype=tf.bool))
    pos = both & same_group & same_label & not_self
    neg = both & same_group & tf.logical_not(same_label)
    return pos, neg, active


def smooth_max(values, mask, temperature: float, axis=1):
    """``T * logsumexp(values / T)`` over masked entries (shifted: no overflow); -1e9 if none."""
    m = tf.stop_gradient(tf.reduce_max(tf.where(mask, values, NEG_LARGE), axis=axis, keepdims=True))
    m = tf.where(tf.reduce_any(mask, axis=axis, keepdims=True), m, 0.0)
    x = tf.where(mask, (values - m) / temperature, NEG_LARGE)
    return tf.squeeze(m, axis) + temperature * tf.reduce_logsumexp(x, axis=axis)


def soft_hinge(x, temperature: float):
    """``T * softplus(x / T)`` computed as ``relu(x) + T * log1p(exp(-|x| / T))``."""
    return tf.nn.relu(x) + temperature * tf.math.log1p(tf.exp(-tf.abs(x) / temperature))


POSITIVES = ("hardest", "each")


def _terms(pos_mask, d, neg_mask, margin, temperature, positives="hardest"):
    """Pull and push terms for distances ``d [B, M]`` with masks over columns.

    Returns ``(pull [B], push [B], has_pos [B])``: the mean positive distance and the
    soft triplet term (0 where there is no positive or no negative): the hardest positive
    against the nearest negatives (``positives="hardest"``), or each positive against
    them, averaged (``"each"``).
    """
    pull, npos = _masked_mean(d, pos_mask, axis=1)
    hardest_neg = -smooth_max(-d, neg_mask, temperature)
    ok = tf.logical_and(npos > 0, tf.reduce_any(neg_mask, axis=1))
    if positives == "each":
        x = tf.where(ok[:, None], margin + d - hardest_neg[:, None], 0.0)
        per_pair, _ = _masked_mean(soft_hinge(x, temperature), pos_mask, axis=1)
        push = tf.where(ok, per_pair, 0.0)
    elif positives == "hardest":
        hardest_pos = smooth_max(d, pos_mask, temperature)
        push = tf.where(ok, soft_hinge(margin + tf.where(ok, hardest_pos - hardest_neg, 0.0),
                                       temperature), 0.0)
    else:
        from kt_pipeline.errors import ConfigError

        raise ConfigError(f"positives={positives!r}: expected one of {', '.join(POSITIVES)}")
    return pull, push, npos > 0


def anchor_contrastive(
    embeddings,
    labels,
    groups,
    narrative=None,
    weights=None,
    anchors=None,
    anchor_labels=None,
    anchor_groups=None,
    margin: float = 0.5,
    sigma: float = 1.0,
    mu_p: float = 1.0,
    mu_n: float = 1.0,
    softness: float = 0.1,
    positives: str = "hardest",
) -> dict:
    """The anchor contrastive loss (see the module docstring) and its parts.

    Returns a dict of scalars: ``loss``, ``in_batch``, ``anchor``, ``pos_dist`` and
    ``neg_dist`` (mean in-batch positive / negative distance, for plots), ``pairs``
    (number of positive pairs).
    """
    z = _f32(embeddings)
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int64)
    groups = tf.cast(tf.convert_to_tensor(groups), tf.int64)
    n = tf.shape(z)[0]
    w = tf.ones([n], tf.float32) if weights is None else _f32(weights)
    pos, neg, active = pair_masks(labels, groups, narrative)

    d = pairwise_distances(z, z)
    pull_b, push_b, has_pos = _terms(pos, d, neg, margin, softness, positives)
    valid_b = tf.logical_and(active, has_pos)
    in_batch = _weighted_mean(mu_p * pull_b + mu_n * push_b, valid_b, w)

    anchor_term = tf.constant(0.0)
    if anchors is not None and sigma < 1.0:
        a = _f32(anchors)
        al = tf.cast(tf.convert_to_tensor(anchor_labels), tf.int64)
        ag = tf.cast(tf.convert_to_tensor(anchor_groups), tf.int64)
        da = pairwise_distances(z, a)  # [B, A]
        same_g = tf.equal(groups[:, None], ag[None, :]) & active[:, None]
        own = same_g & tf.equal(labels[:, None], al[None, :])
        other = same_g & tf.logical_not(tf.equal(labels[:, None], al[None, :]))
        has_own = tf.reduce_any(own, axis=1)
        big = tf.stop_gradient(tf.reduce_max(tf.where(own, da, 0.0)) + 1.0)
        pull_a = tf.reduce_min(tf.where(own, da, big), axis=1)
        pull_a = tf.where(has_own, pull_a, 0.0)
        has_other = tf.reduce_any(other, axis=1) & has_own
        nearest_other = -smooth_max(-da, other, softness)
        push_a = tf.where(has_other, soft_hinge(
            margin + tf.where(has_other, pull_a - nearest_other, 0.0), softness), 0.0)
        anchor_term = _weighted_mean(mu_p * pull_a + mu_n * push_a, has_own, w)

    pos_dist, npairs = _masked_mean(d, pos, axis=[0, 1])
    neg_dist, _ = _masked_mean(d, neg, axis=[0, 1])
    loss = sigma * in_batch + (1.0 - sigma) * anchor_term
    return {"loss": loss, "in_batch": in_batch, "anchor": anchor_term,
            "pos_dist": pos_dist, "neg_dist": neg_dist, "pairs": npairs}


def supcon(embeddings, labels, groups, narrative=None, weights=None,
           temperature: float = 0.1) -> dict:
    """Supervised contrastive loss (Khosla et al. 2020) within each book, as a baseline.

    Embeddings are L2-normalised; for example ``i`` with positives ``P(i)`` and
    candidates ``A(i)`` (same book, non-narrative, not ``i``)::

        L_i = -mean_{p in P(i)} [ s_ip / T - logsumexp_{a in A(i)} s_ia / T ]

    Examples without positives do not count.
    """
    z = tf.math.l2_normalize(_f32(embeddings), axis=-1, epsilon=1e-6)
    n = tf.shape(z)[0]
    w = tf.ones([n], tf.float32) if weights is None else _f32(weights)
    pos, neg, active = pair_masks(labels, groups, narrative)
    cand = pos | neg
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    lse = tf.reduce_logsumexp(tf.where(cand, logits, NEG_LARGE), axis=1, keepdims=True)
    log_prob = logits - lse
    per, npos = _masked_mean(-log_prob, pos, axis=1)
    valid = active & (npos > 0)
    loss = _weighted_mean(per, valid, w)
    d = pairwise_distances(z, z)
    pos_dist, npairs = _masked_mean(d, pos, axis=[0, 1])
    neg_dist, _ = _masked_mean(d, neg, axis=[0, 1])
    return {"loss": loss, "in_batch": loss, "anchor": tf.constant(0.0),
            "pos_dist": pos_dist, "neg_dist": neg_dist, "pairs": npairs}


def narrative_bce(logits, narrative):
    """Mean binary cross-entropy of the narrative head (``logits [B]`` or ``[B, 1]``)."""
    logits = tf.reshape(_f32(logits), [-1])
    y = tf.reshape(_f32(narrative), [-1])
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))


def total_loss(embeddings, narrative_logits, labels, groups, narrative, *, kind="anchor",
               lam: float = 1.0, weights=None, temperature: float = 0.1, **anchor_kwargs) -> dict:
    """``narrative BCE + lam * contrastive`` with ``kind`` "anchor" or "supcon"; all parts."""
    if kind == "supcon":
        parts = supcon(embeddings, labels, groups, narrative, weights, temperature)
    elif kind == "anchor":
        parts = anchor_contrastive(embeddings, labels, groups, narrative, weights, **anchor_kwargs)
    else:
        from kt_pipeline.errors import ConfigError

        raise ConfigError(f"loss={kind!r}: expected 'anchor' or 'supcon'")
    bce = narrative_bce(narrative_logits, narrative)
    return {**parts, "contrastive": parts["loss"], "bce": bce, "loss": bce + lam * parts["loss"]}
