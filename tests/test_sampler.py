"""The P speakers x K quotes per book batch sampler and inverse-frequency weights."""

import collections

import numpy as np
import pytest

from kt_pipeline.errors import ConfigError, DataError
from kt_pipeline.sampler import BookSpeakerSampler, inverse_frequency_weights


def corpus():
    groups, labels, narr = [], [], []
    # book 0: speakers 0..4 with 20, 10, 5, 2, 1 quotes; book 1: speakers 0..1 (8, 3); 6 narrative each
    for g, counts in ((0, [20, 10, 5, 2, 1]), (1, [8, 3])):
        for s, c in enumerate(counts):
            groups += [g] * c
            labels += [s] * c
            narr += [False] * c
        groups += [g] * 6
        labels += [99] * 6
        narr += [True] * 6
    return np.array(groups), np.array(labels), np.array(narr)


def test_batches_are_p_speakers_by_k_quotes_of_one_book():
    g, y, n = corpus()
    s = BookSpeakerSampler(g, y, n, speakers_per_batch=3, quotes_per_speaker=4,
                           narrative_per_batch=2, seed=1)
    books = collections.Counter()
    for _ in range(200):
        b = s.sample()
        assert len(set(b)) == len(b)  # no repeats
        assert len(set(g[b])) == 1
        books[int(g[b][0])] += 1
        quotes = b[~n[b]]
        per = collections.Counter(y[quotes].tolist())
        assert n[b].sum() == 2
        assert 99 not in per and 4 not in (per if g[b][0] == 0 else {})  # 1-quote speaker excluded
        if g[b][0] == 0:
            assert len(per) == 3
            assert all(c == min(4, [20, 10, 5, 2][k]) for k, c in per.items())
        else:
            assert len(per) == 2  # only two speakers exist
    # books drawn roughly in proportion to their quotes (37 vs 11)
    assert books[0] > 2 * books[1] > 0


def test_every_positive_pair_exists():
    g, y, n = corpus()
    s = BookSpeakerSampler(g, y, n, speakers_per_batch=2, quotes_per_speaker=2, seed=0)
    for b in (s.sample() for _ in range(50)):
        assert all(c >= 2 for c in collections.Counter(y[b].tolist()).values())


def test_seeded_and_iterable():
    g, y, n = corpus()
    a = BookSpeakerSampler(g, y, n, seed=3)
    b = BookSpeakerSampler(g, y, n, seed=3)
    it = iter(b)
    for _ in range(5):
        assert a.sample().tolist() == next(it).tolist()


def test_no_usable_speaker_is_an_error():
    with pytest.raises(DataError, match="at least 2 quotes"):
        BookSpeakerSampler([0, 0, 1], [0, 1, 0])
    with pytest.raises(ConfigError):
        BookSpeakerSampler([0, 0], [0, 0], speakers_per_batch=0)


def test_inverse_frequency_weights():
    g, y, n = corpus()
    w = inverse_frequency_weights(g, y, n)
    for book in (0, 1):
        q = (g == book) & ~n
        assert w[q].mean() == pytest.approx(1.0)
        counts = collections.Counter(y[q].tolist())
        for s, c in counts.items():
            assert w[q & (y == s)] == pytest.approx(q.sum() / (len(counts) * c))
    assert np.all(w[n] == 1.0)
    assert np.allclose(inverse_frequency_weights(g, y, n, power=0.0), 1.0)


def test_speaker_power_draws_frequent_speakers_more_often():
    g, y, n = corpus()
    book0 = g == 0
    draws = {}
    for power in (0.0, 1.0):
        s = BookSpeakerSampler(g[book0], y[book0], n[book0], speakers_per_batch=1,
                               quotes_per_speaker=2, seed=4, speaker_power=power)
        c = collections.Counter(int(y[s.sample()][0]) for _ in range(2000))
        draws[power] = {k: v / 2000 for k, v in c.items()}
    # eligible speakers have 20, 10, 5, 2 quotes: uniform 1/4 each, or 20/37, 10/37, ...
    for k in range(4):
        assert draws[0.0][k] == pytest.approx(0.25, abs=0.04)
        assert draws[1.0][k] == pytest.approx([20, 10, 5, 2][k] / 37, abs=0.04)
    with pytest.raises(ConfigError, match="speaker_power"):
        BookSpeakerSampler(g, y, n, speaker_power=-1)
