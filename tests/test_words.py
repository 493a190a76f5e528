"""The word splitter recovers CoNLL-2003's words from their text, and the tagger's CoNLL words map back to the
original text."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from flaxner.config import DataConfig
from flaxner.data.splits import load_split
from flaxner.data.words import split_words, words_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from tag_vs_eval import join_words, tags_on_words  # noqa: E402


@pytest.mark.parametrize("text, words", [
    ("U.S. Treasury bonds rose 1,000 points, or 3.5 percent.",
     ["U.S.", "Treasury", "bonds", "rose", "1,000", "points", ",", "or", "3.5", "percent", "."]),
    ("Bre-X Minerals Inc. said the trans-Atlantic deal (St. Louis) failed.",
     ["Bre-X", "Minerals", "Inc.", "said", "the", "trans-Atlantic", "deal", "(", "St.", "Louis", ")", "failed",
      "."]),
    ("Clinton's aides didn't say \"no\" -- they left for the U.S.",
     ["Clinton", "'s", "aides", "did", "n't", "say", '"', "no", '"', "--", "they", "left", "for", "the", "U.S",
      "."]),
    ("  ", []),
    # list numbers keep their period before a capitalised word (results tables run together in a document's text)
    ("Men 1. Jesper Ronnback (Sweden) 25.76 points 2. Andrei Ivanov", ["Men", "1.", "Jesper", "Ronnback", "(",
     "Sweden", ")", "25.76", "points", "2.", "Andrei", "Ivanov"]),
    ("They won 3. the rest lost 2.", ["They", "won", "3", ".", "the", "rest", "lost", "2", "."]),
    ("the Russian-U.S. relations and Bre-X.", ["the", "Russian-U.S.", "relations", "and", "Bre-X", "."]),
])
def test_split_words_examples(text, words):
    spans = split_words(text)
    assert [text[a:b] for a, b in spans] == words
    assert all(a < b and not text[a:b].isspace() for a, b in spans)


@pytest.mark.parametrize("layout", ["spaces", "running"])
def test_conll2003_words_are_recovered_from_their_text(layout):
    """Validation split (not used to write the rules): the splitter gives back the gold words of nearly every
    sentence, whether they are joined by single spaces or laid out as running text."""
    tokens = load_split(DataConfig(), "validation")[:]["tokens"]
    ok = sum(words_of(join_words(ws, layout)[0]) == ws for ws in tokens)
    assert ok / len(tokens) > 0.995, ok / len(tokens)


@pytest.mark.parametrize("layout", ["spaces", "running"])
def test_conll2003_documents_words_are_recovered(layout):
    """Whole validation documents (not used to write the rules), their sentences run together as one text: the
    splitter gives back the gold words of nearly every document (list numbers such as `2.` inside the text
    included), and finds more than half the sentence starts with few false ones."""
    from flaxner.data.words import sentence_starts
    from tag_vs_eval import documents_of, join_document

    tokens = load_split(DataConfig(), "validation")[:]["tokens"]
    docs = documents_of("validation", tokens)
    same = found = extra = starts = 0
    for doc in docs:
        text, spans = join_document([tokens[i] for i in doc], layout)
        got = split_words(text)
        same += [text[a:b] for a, b in got] == [text[a:b] for sp in spans for a, b in sp]
        first = {a: k for k, (a, _) in enumerate(got)}
        want = {first.get(sp[0][0], -1) for sp in spans if sp}
        pred = set(sentence_starts(text, got))
        starts, found, extra = starts + len(want), found + len(want & pred), extra + len(pred - want)
    assert same / len(docs) > (0.99 if layout == "spaces" else 0.85), same / len(docs)
    assert found / starts > 0.6 and extra / starts < 0.05, (found, extra, starts)


def test_join_and_map_back():
    text, spans = join_words(["He", "met", "Bob", "(", "U.S.", ")", "'s", "men", "."], "running")
    assert text == "He met Bob (U.S.)'s men."
    assert [text[a:b] for a, b in spans] == ["He", "met", "Bob", "(", "U.S.", ")", "'s", "men", "."]
    ents = [{"start": 7, "end": 10, "label": "PER"}, {"start": 12, "end": 14, "label": "LOC"}]
    assert tags_on_words(ents, spans) == ["O", "O", "B-PER", "O", "B-LOC", "O", "O", "O", "O"]


@pytest.mark.parametrize("tokenizer_dir", ["fixture", "minilm"])
def test_conll_words_offsets_point_into_the_text(tokenizer_dir):
    """With words=conll each sub-token's offsets are into the original text, inside its word's span, and the
    words are split_words' words."""
    from tokenizers import Tokenizer

    from flaxner.models.loading import packaged_minilm
    from flaxner.tagging.reading import Record
    from flaxner.tagging.windows import encode

    folder = Path(__file__).resolve().parent / "fixtures" / "tiny-bert" if tokenizer_dir == "fixture" \
        else Path(packaged_minilm())
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.no_truncation()
    backend.no_padding()
    texts = ["  Bre-X's U.S. unit, (Calgary) rose 3.5%.", "", "Zürich\u00a0café  naïve Ünïcode."]
    docs = encode(backend, [Record(i + 1, i, t) for i, t in enumerate(texts)], words="conll")
    for (_rec, doc), text in zip(docs, texts, strict=True):
        spans = split_words(text)
        assert len(set(doc.word_ids.tolist())) == len(spans) if len(doc.ids) else spans == []
        for t in range(len(doc.ids)):
            a, b = doc.token_chars(t)
            wa, wb = spans[doc.word_ids[t]]
            assert wa <= a < b <= wb
        first = np.flatnonzero(np.r_[True, doc.word_ids[1:] != doc.word_ids[:-1]]) if len(doc.ids) else []
        assert [doc.token_chars(t)[0] for t in first] == [a for a, _ in spans]


def _sentences(text):
    from flaxner.data.words import sentence_starts

    spans = split_words(text)
    starts = sentence_starts(text, spans)
    return [" ".join(text[a:b] for a, b in spans[s:e]) for s, e in zip(starts, starts[1:] + [len(spans)])]


def test_sentences_end_at_terminal_marks_not_at_abbreviations():
    assert _sentences("Japan won 2-1 . China lost ! Why ?") == ["Japan won 2-1 .", "China lost !", "Why ?"]
    assert _sentences('He met U.S. officials in St. Louis. "Fine." (He left.) Then') == [
        "He met U.S. officials in St. Louis .", '" Fine . "', "( He left . )", "Then"]
    assert _sentences("Wait... what") == ["Wait ...", "what"]
    # CoNLL-style text: marks are words of their own; a straight quote closes the quote its sentence opened
    assert _sentences('" Fine . " He left ( again . ) " Next') == ['" Fine . "', "He left ( again . )", '" Next']


def test_sentences_end_at_blank_lines_only():
    assert _sentences("SOCCER - LATE GOALS\n\nLONDON 1996-08-30\nWest Ham won .") == [
        "SOCCER - LATE GOALS", "LONDON 1996-08-30 West Ham won ."]
    assert _sentences("") == [] and _sentences("no end") == ["no end"]
