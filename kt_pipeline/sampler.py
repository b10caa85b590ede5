"""Batch sampler for speaker clustering: P speakers x K quotes, all from one book.

A random batch from a corpus of novels rarely holds two quotes of one speaker of one
book, so the contrastive loss would see no positives. Each batch from
:class:`BookSpeakerSampler` picks one book (with probability proportional to its
quote count), then ``P`` of its speakers that have at least 2 quotes (uniformly, so
rare speakers are seen too; or with probability proportional to ``n_quotes **
speaker_power``, 1 = as often as their quotes), then ``K`` quotes of each (without
replacement; fewer when a speaker has fewer), plus ``narrative`` narrative examples
of the same book for the narrative head. The order of indices within a batch is shuffled.

Example:

>>> import numpy as np
>>> from kt_pipeline.sampler import BookSpeakerSampler
>>> groups = np.array([0] * 6 + [1] * 4); labels = np.array([0, 0, 1, 1, 2, 2, 0, 0, 1, 1])
>>> s = BookSpeakerSampler(groups, labels, speakers_per_batch=2, quotes_per_speaker=2, seed=0)
>>> batch = s.sample()
>>> len(set(groups[batch])), len(batch)
(1, 4)
"""

from __future__ import annotations

import numpy as np

from kt_pipeline.errors import ConfigError, DataError


class BookSpeakerSampler:
    """Draw index batches of ``P`` speakers x ``K`` quotes from a single book."""

    def __init__(self, groups, labels, narrative=None, *, speakers_per_batch: int = 8,
                 quotes_per_speaker: int = 4, narrative_per_batch: int = 0, seed: int = 0,
                 speaker_power: float = 0.0):
        if speakers_per_batch < 1 or quotes_per_speaker < 1 or narrative_per_batch < 0:
            raise ConfigError(
                f"sampler: speakers_per_batch={speakers_per_batch}, quotes_per_speaker="
                f"{quotes_per_speaker}, narrative_per_batch={narrative_per_batch}: expected "
                ">= 1, >= 1 and >= 0"
            )
        self.groups = np.asarray(groups)
        self.labels = np.asarray(labels)
        narr = np.zeros(len(self.labels), bool) if narrative is None else np.asarray(narrative, bool)
        if not 0.0 <= speaker_power <= 2.0:
            raise ConfigError(f"sampler: speaker_power={speaker_power}: expected 0..2 "
                              "(0 = every speaker equally often, 1 = in proportion to its quotes)")
        self.P, self.K, self.N = int(speakers_per_batch), int(quotes_per_speaker), int(narrative_per_batch)
        self.speaker_power = float(speaker_power)
        self.rng = np.random.default_rng(seed)
        self.books = {}  # group -> (speaker -> indices, narrative indices)
        for g in np.unique(self.groups):
            rows = np.flatnonzero(self.groups == g)
            quotes = rows[~narr[rows]]
            speakers = {}
            for y in np.unique(self.labels[quotes]):
                idx = quotes[self.labels[quotes] == y]
                speakers[y] = idx
            eligible = [y for y, idx in speakers.items() if len(idx) >= 2]
            if eligible:
                self.books[g] = ({y: speakers[y] for y in eligible}, rows[narr[rows]])
        if not self.books:
            raise DataError(
                "sampler: no book has a speaker with at least 2 quotes, so no batch can hold "
                "a positive pair; check the speaker (label) and book (group) columns"
            )
        self._book_keys = list(self.books)
        sizes = np.array([sum(len(v) for v in self.books[g][0].values()) for g in self._book_keys], float)
        self._book_p = sizes / sizes.sum()

    def sample(self) -> np.ndarray:
        """One batch of example indices (int64)."""
        g = self._book_keys[self.rng.choice(len(self._book_keys), p=self._book_p)]
        speakers, narrative = self.books[g]
        keys = list(speakers)
        p = None
        if self.speaker_power:
            p = np.array([len(speakers[k]) for k in keys], float) ** self.speaker_power
            p /= p.sum()
        chosen = self.rng.choice(len(keys), size=min(self.P, len(keys)), replace=False, p=p)
        parts = []
        for c in chosen:
            idx = speakers[keys[c]]
            parts.append(self.rng.choice(idx, size=min(self.K, len(idx)), replace=False))
        if self.N and len(narrative):
            parts.append(self.rng.choice(narrative, size=min(self.N, len(narrative)), replace=False))
        return self.rng.permutation(np.concatenate(parts)).astype(np.int64)

    def __iter__(self):
        while True:
            yield self.sample()


def inverse_frequency_weights(groups, labels, narrative=None, power: float = 1.0) -> np.ndarray:
    """Per-example weight ``(n_book / (S_book * n_speaker)) ** power`` (1 = balanced).

    A speaker with few quotes in its book weighs more; the weights of a book's quotes
    average to 1 when ``power=1``. Narrative rows get weight 1.

    >>> inverse_frequency_weights([0, 0, 0, 0], [0, 0, 0, 1]).tolist()
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    groups, labels = np.asarray(groups), np.asarray(labels)
    narr = np.zeros(len(labels), bool) if narrative is None else np.asarray(narrative, bool)
    w = np.ones(len(labels), float)
    for g in np.unique(groups):
        rows = np.flatnonzero((groups == g) & ~narr)
        if not len(rows):
            continue
        speakers, inverse, counts = np.unique(labels[rows], return_inverse=True, return_counts=True)
        w[rows] = (len(rows) / (len(speakers) * counts[inverse.reshape(-1)])) ** power
    return w
