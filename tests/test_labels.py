import numpy as np
import pytest
from seqeval.metrics.sequence_labeling import get_entities

from flaxner.data.labels import CONLL_LABELS, IGNORE, align_labels, b_to_i, label2id, spans_from_ids, spans_from_tags

L = label2id()


@pytest.mark.parametrize("word_ids, word_labels, all_tokens, expected", [
    # [CLS] w0 w1 [SEP]: one piece per word
    ([None, 0, 1, None], [L["B-PER"], L["O"]], False, [IGNORE, L["B-PER"], L["O"], IGNORE]),
    # a word split into three pieces: only the first is labelled
    ([None, 0, 0, 0, 1, None], [L["B-LOC"], L["O"]], False, [IGNORE, L["B-LOC"], IGNORE, IGNORE, L["O"], IGNORE]),
    # label_all_tokens: later pieces get the I- twin of a B- tag
    ([None, 0, 0, 1, 1, None], [L["B-ORG"], L["I-ORG"]], True,
     [IGNORE, L["B-ORG"], L["I-ORG"], L["I-ORG"], L["I-ORG"], IGNORE]),
    # a long word (many pieces) at the end, no specials (a truncated or windowed piece)
    ([0, 1, 1, 1, 1, 1], [L["O"], L["B-MISC"]], False, [L["O"], L["B-MISC"], IGNORE, IGNORE, IGNORE, IGNORE]),
    # the same word id after a special token is a new start
    ([None, 0, None, 0], [L["B-PER"]], False, [IGNORE, L["B-PER"], IGNORE, L["B-PER"]]),
])
def test_align_labels(word_ids, word_labels, all_tokens, expected):
    assert align_labels(word_ids, word_labels, all_tokens, b_to_i(CONLL_LABELS)) == expected


def test_b_to_i_map():
    m = b_to_i(CONLL_LABELS)
    assert [CONLL_LABELS[i] for i in m] == ["O", "I-PER", "I-PER", "I-ORG", "I-ORG", "I-LOC", "I-LOC", "I-MISC",
                                            "I-MISC"]


@pytest.mark.parametrize("tags", [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["I-PER", "I-PER", "O"],                 # stray I- starts a span
    ["B-PER", "I-LOC", "I-LOC", "O"],        # type change mid-span
    ["B-PER", "B-PER", "I-PER"],
    ["O", "O"],
    ["B-MISC"],
    ["I-ORG", "B-ORG", "O", "I-ORG", "I-MISC"],
])
def test_spans_match_seqeval(tags):
    ours = spans_from_tags(tags)
    theirs = [(t, s, e + 1) for t, s, e in get_entities(tags)]
    assert sorted(ours) == sorted(theirs)
    assert len(ours) == len(theirs) and isinstance(ours[0] if ours else (), tuple)


def test_vectorized_spans_equal_the_loop_and_respect_cuts():
    """spans_from_ids reads label ids as spans_from_tags reads the tags; with cuts, sequences laid end to end give
    each sequence's own spans, shifted."""
    rng = np.random.default_rng(0)
    labels = [*CONLL_LABELS, "B-X"]  # a type with no I- tag
    for _ in range(2000):
        seqs = [rng.choice(len(labels), rng.integers(0, 9), p=[0.4] + [0.6 / 9] * 9) for _ in range(rng.integers(1, 5))]
        for ids in seqs:
            assert spans_from_ids(ids, labels) == spans_from_tags([labels[i] for i in ids])
        flat = np.concatenate(seqs).astype(np.int64)
        cut = np.zeros(len(flat), dtype=bool)
        starts = np.cumsum([0] + [len(x) for x in seqs[:-1]])
        cut[starts[starts < len(flat)]] = True
        expected = [(t, a + o, b + o) for ids, o in zip(seqs, starts) for t, a, b in spans_from_tags([labels[i] for i in ids])]
        assert spans_from_ids(flat, labels, cut) == expected


def test_labels_are_hub_order():
    assert CONLL_LABELS[0] == "O" and CONLL_LABELS[1:3] == ("B-PER", "I-PER") and len(np.unique(CONLL_LABELS)) == 9


@pytest.mark.parametrize("scheme", ["iob1", "bioes", "io"])
def test_scheme_round_trip_keeps_seqeval_spans(scheme):
    """Random IOB2 sequences -> scheme -> IOB2: seqeval finds the same entities in all three (IO: adjacent
    same-type entities become one, which IO cannot tell apart)."""
    from flaxner.data.labels import from_iob2, to_iob2

    rng = np.random.default_rng(3)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(300):
        seq = to_iob2([tags[i] for i in rng.integers(0, 5, rng.integers(1, 12))], "iob1")  # valid IOB2
        conv = from_iob2(seq, scheme)
        back = to_iob2(conv, scheme)
        assert get_entities(conv) == get_entities(back)
        if scheme != "io":
            assert back == seq and get_entities(conv) == get_entities(seq)


def test_conlleval_spans_equal_seqeval_get_entities_on_random_tags():
    """flaxner's conlleval chunking (the core install has no seqeval) finds seqeval's entities on random tags of
    every prefix, stray and mixed ones included."""
    from flaxner.data.labels import conlleval_spans

    rng = np.random.default_rng(7)
    tags = ["O", *(f"{p}-{t}" for p in "BIES" for t in ("PER", "LOC"))]
    for _ in range(3000):
        seq = [tags[i] for i in rng.integers(0, len(tags), rng.integers(0, 10))]
        assert conlleval_spans(seq) == [(t, a, b + 1) for t, a, b in get_entities(seq)]
