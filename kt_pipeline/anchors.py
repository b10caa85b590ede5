"""Anchor memory: recent embeddings per (book, speaker) and the anchors computed from them.

The memory keeps the non-narrative embeddings of the last ``memory_steps`` batches
(``None``: all of them). Every ``anchor_every`` steps :meth:`AnchorMemory.maybe_update`
recomputes per-speaker anchors: the centroid (``k=1``) or ``k`` k-means centres. A
speaker whose anchors lie further than ``threshold`` from its centroid (a spread-out,
unreliable speaker) gets no anchor; so does a speaker with fewer than ``min_count``
remembered embeddings.

It runs on host numpy outside the compiled training step, so it works under any
``tf.distribute`` strategy: the step returns the (gathered) batch embeddings and the
anchors go back in as plain tensors.

Example:

>>> import numpy as np
>>> from kt_pipeline.anchors import AnchorMemory
>>> mem = AnchorMemory(memory_steps=2, anchor_every=1)
>>> mem.add(np.array([[0., 0.], [2., 0.]]), labels=[1, 1], groups=[0, 0])
>>> mem.maybe_update(step=1)
True
>>> mem.anchors()[0].tolist(), mem.anchors()[1].tolist()
([[1.0, 0.0]], [1])
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np

from kt_pipeline.errors import ConfigError


class AnchorMemory:
    """A bounded memory of embeddings and the per-speaker anchors derived from it."""

    def __init__(self, memory_steps: Optional[int] = 20, anchor_every: int = 10, k: int = 1,
                 threshold: Optional[float] = None, min_count: int = 2, seed: int = 0):
        if memory_steps is not None and int(memory_steps) < 1:
            raise ConfigError(f"memory_steps={memory_steps}: expected >= 1 or null (unlimited)")
        if int(anchor_every) < 1:
            raise ConfigError(f"anchor_every={anchor_every}: expected >= 1")
        if int(k) < 1:
            raise ConfigError(f"anchors_per_speaker={k}: expected >= 1")
        self.memory_steps = None if memory_steps is None else int(memory_steps)
        self.anchor_every = int(anchor_every)
        self.k = int(k)
        self.threshold = threshold
        self.min_count = max(1, int(min_count))
        self.seed = seed
        self._batches: collections.deque = collections.deque(maxlen=self.memory_steps)
        self._anchors = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.updates = 0

    def add(self, embeddings, labels, groups, narrative=None) -> None:
        """Remember one batch (narrative rows, if flagged, are left out)."""
        z = np.asarray(embeddings, np.float32)
        y = np.asarray(labels, np.int64).reshape(-1)
        g = np.asarray(groups, np.int64).reshape(-1)
        keep = np.ones(len(y), bool) if narrative is None else ~np.asarray(narrative, bool).reshape(-1)
        self._batches.append((z[keep], y[keep], g[keep]))

    def __len__(self) -> int:
        return sum(len(b[1]) for b in self._batches)

    def contents(self):
        """``(embeddings, labels, groups)`` of everything remembered."""
        if not self._batches:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        z, y, g = zip(*self._batches)
        return np.concatenate(z), np.concatenate(y), np.concatenate(g)

    def maybe_update(self, step: int) -> bool:
        """Recompute the anchors when ``step`` is a multiple of ``anchor_every``."""
        if step % self.anchor_every:
            return False
        self._anchors = self.compute_anchors(*self.contents())
        self.updates += 1
        return True

    def speaker_anchors(self, points: np.ndarray) -> Optional[np.ndarray]:
        """Anchors ``[k', D]`` for one speaker's points, or None (too few / too spread)."""
        if len(points) < self.min_count:
            return None
        centroid = points.mean(axis=0, keepdims=True)
        k = min(self.k, len(np.unique(points, axis=0)))
        if k <= 1:
            centres = centroid
        else:
            from sklearn.cluster import KMeans

            centres = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit(points).cluster_centers_
        if self.threshold is not None:
            if np.linalg.norm(centres - centroid, axis=1).max() > float(self.threshold):
                return None
        return centres.astype(np.float32)

    def compute_anchors(self, z, y, g):
        """``(anchors [A, D], labels [A], groups [A])`` for every (book, speaker) in memory."""
        out_z, out_y, out_g = [], [], []
        if len(y):
            keys = np.stack([g, y], axis=1)
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            for i, (gi, yi) in enumerate(uniq):
                centres = self.speaker_anchors(z[inverse == i])
                if centres is None:
                    continue
                out_z.append(centres)
                out_y.append(np.full(len(centres), yi, np.int64))
                out_g.append(np.full(len(centres), gi, np.int64))
        if not out_z:
            dim = z.shape[1] if z.ndim == 2 else 0
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_z), np.concatenate(out_y), np.concatenate(out_g)

    def anchors(self, groups=None):
        """The current anchors, optionally only those of the books in ``groups``."""
        a, y, g = self._anchors
        if groups is None or not len(y):
            return a, y, g
        keep = np.isin(g, np.asarray(groups, np.int64))
        return a[keep], y[keep], g[keep]
