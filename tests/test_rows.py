"""The row planner: owned ranges tile every text once, rows never cross a segment, word splits never cut a word."""

import random

import numpy as np
import pytest

from flaxner.data.rows import plan_rows, sentence_token_starts, split_at_words


def _random_case(rng):
    n_words = rng.randint(0, 60)
    word_ids = [w for w in range(n_words) for _ in range(rng.randint(1, 4))]
    n = len(word_ids)
    cuts = sorted(rng.sample(range(1, n), min(rng.randint(0, 5), max(n - 1, 0)))) if n > 1 else []
    return word_ids, n, ([0] + cuts) if rng.random() < 0.7 else None


@pytest.mark.parametrize("split", ["words", "windows"])
def test_owned_ranges_tile_each_text_once_and_rows_stay_in_their_segment(split):
    rng = random.Random(0)
    for _ in range(500):
        word_ids, n, segments = _random_case(rng)
        size = rng.randint(3, 20)
        stride = rng.randint(0, size - 1)
        rows = plan_rows(n, size, split, stride=stride, segments=segments, word_ids=word_ids)
        owned = [t for r in rows for t in range(r.own_start, r.own_end)]
        assert owned == list(range(n))  # every sub-token once, in order
        bounds = [0, n] if not segments else [*segments, n]
        for r in rows:
            assert r.start <= r.own_start < r.own_end <= r.end and r.end - r.start <= max(size, 1)
            seg = max(k for k, b in enumerate(bounds[:-1]) if b <= r.own_start)
            assert bounds[seg] <= r.start and r.end <= bounds[seg + 1], (r, bounds)  # no row crosses a segment
            if split == "words":
                assert (r.start, r.end) == (r.own_start, r.own_end)


def test_word_split_never_cuts_a_word_that_fits():
    rng = random.Random(1)
    for _ in range(300):
        word_ids, n, _ = _random_case(rng)
        budget = rng.randint(4, 30)
        pieces = split_at_words(word_ids, budget)
        assert [t for a, b in pieces for t in range(a, b)] == list(range(n)) or n == 0
        for a, b in pieces:
            assert b - a <= budget
            if b < n:  # a cut between two sub-tokens of one word only when that word alone exceeds the budget
                assert word_ids[b] != word_ids[b - 1] or word_ids.count(word_ids[b]) > budget


def test_sentence_token_starts_maps_first_words_to_first_sub_tokens():
    word_ids = np.array([0, 0, 1, 2, 2, 2, 4, 5], dtype=np.int32)  # word 3 has no sub-token
    assert sentence_token_starts(word_ids, [0, 2, 3, 5]) == [0, 3, 6, 7]
    assert sentence_token_starts(word_ids, [0, 6]) == [0]  # a sentence past the last sub-token is dropped
    assert sentence_token_starts(np.array([], dtype=np.int32), [0]) == []


def test_tagging_rows_own_at_most_a_segment_length_and_see_context_within_max_length():
    from flaxner.tagging.windows import DocState, rows_for

    doc = DocState(0, "", np.arange(200, dtype=np.int32), np.arange(200, dtype=np.int32), segments=[0, 150])
    rows = rows_for(doc, 126, 32, context=10, segment=20)
    assert [t for r in rows for t in range(r.own_start, r.own_end)] == list(range(200))
    assert all(r.own_end - r.own_start <= 20 and r.end - r.start <= 126 for r in rows)
    assert all(r.own_start - r.start <= 10 + 5 and r.end - r.own_end <= 10 + 5 for r in rows)  # + the overlap
    assert not any(r.own_start < 150 < r.own_end for r in rows)  # the sentence start is kept
    whole = rows_for(doc, 126, 32)  # no segment length: rows up to max_length within each sentence
    assert [(r.own_start, r.own_end) for r in whole][-1] == (150, 200)
