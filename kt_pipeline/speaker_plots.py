"""Plots for speaker clustering, as PNG files and (optionally) TensorBoard images.

- :func:`speaker_shares`: each book's speaker shares (bar chart, top speakers);
- :func:`distance_curve`: mean positive and negative in-batch distance per step;
- :func:`pca_scatter`: a 2-D PCA projection of one book's embeddings, coloured by speaker.

Example:

>>> from kt_pipeline import speaker_plots
>>> speaker_plots.distance_curve([{"step": 1, "pos_dist": .5, "neg_dist": .9}],
...                              "/tmp/distances.png")                    # doctest: +SKIP
'/tmp/distances.png'
"""

from __future__ import annotations

import io
import math

import numpy as np


def _figure(nrows=1, ncols=1, size=(6, 4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(nrows, ncols, figsize=size, squeeze=False)


def _save(plt, fig, path: str, writer=None, tag: str = "") -> str:
    """Write the figure as PNG through tf.io.gfile; also to TensorBoard when given."""
    import tensorflow as tf

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = buf.getvalue()
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(png)
    if writer is not None:
        with writer.as_default(step=0):
            tf.summary.image(tag or path.rsplit("/", 1)[-1], tf.image.decode_png(png)[None], step=0)
        writer.flush()
    return path


def speaker_shares(shares: dict, path: str, writer=None, top: int = 10) -> str:
    """Bar charts of ``{book: {speaker: share}}`` (the ``top`` speakers of each book)."""
    books = sorted(shares)
    cols = min(3, max(1, len(books)))
    rows = max(1, math.ceil(len(books) / cols))
    plt, fig, axes = _figure(rows, cols, (4.5 * cols, 3.2 * rows))
    for ax in axes.flat[len(books):]:
        ax.axis("off")
    for ax, book in zip(axes.flat, books):
        items = list(shares[book].items())[:top]
        ax.bar(range(len(items)), [v for _, v in items], color="tab:blue")
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([k[:14] for k, _ in items], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{book} ({len(shares[book])} speakers)", fontsize=9)
        ax.set_ylabel("share of quotes")
    return _save(plt, fig, path, writer, "speaker_shares")


def distance_curve(history: list, path: str, writer=None) -> str:
    """Mean positive / negative in-batch distance per training step."""
    plt, fig, axes = _figure()
    ax = axes[0, 0]
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["pos_dist"] for h in history], label="positive (same speaker)")
    ax.plot(steps, [h["neg_dist"] for h in history], label="negative (other speaker)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean L2 distance")
    ax.legend()
    return _save(plt, fig, path, writer, "distances")


def pca_scatter(embeddings, speakers, path: str, title: str = "", writer=None) -> str:
    """2-D PCA of one book's embeddings, one colour per speaker."""
    z = np.asarray(embeddings, np.float64)
    z = z - z.mean(axis=0, keepdims=True)
    if len(z) >= 2:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        xy = z @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    else:
        xy = np.zeros((len(z), 2))
    plt, fig, axes = _figure(size=(6, 5))
    ax = axes[0, 0]
    speakers = np.asarray(speakers)
    uniq, counts = np.unique(speakers, return_counts=True)
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(uniq[np.argsort(-counts)]):
        m = speakers == s
        ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(i % 20), alpha=0.7)
    ax.set_title(title or "PCA of embeddings", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return _save(plt, fig, path, writer, "pca")
