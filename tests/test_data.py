import numpy as np
import pytest

from flaxner.config import DataConfig
from flaxner.data.splits import DataError, encode, find_split_file, load_split, read_conll
from flaxner.data.labels import CONLL_LABELS, IGNORE


def test_read_conll_snippet(snippet):
    cols = read_conll(snippet)
    assert len(cols["tokens"]) == 6  # the -DOCSTART- line is not a sentence
    assert cols["tokens"][0][:3] == ["EU", "rejects", "German"]
    assert [CONLL_LABELS[t] for t in cols["ner_tags"][1]] == ["B-PER", "I-PER"]


@pytest.mark.parametrize("bad_line, reason", [
    ("Paris NNP B-NP B-CITY", "tag 'B-CITY' is not in the label set"),
    ("Lonely", "expected at least 2 columns"),
])
def test_bad_lines_name_file_and_line(tmp_path, snippet, bad_line, reason):
    lines = snippet.read_text().splitlines()
    lines.insert(4, bad_line)
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"train.txt:5: {reason}"):
        read_conll(p)


def test_missing_split_is_named(tmp_path, snippet):
    (tmp_path / "train.txt").write_text(snippet.read_text())
    with pytest.raises(DataError, match="no file for split 'validation'"):
        find_split_file(tmp_path, "validation")
    ds = load_split(DataConfig(source=str(tmp_path)), "train")
    assert ds.num_rows == 6 and ds.features["ner_tags"].feature.names == list(CONLL_LABELS)


def test_builtin_copy_matches_hub_counts():
    counts = {s: load_split(DataConfig(), s).num_rows for s in ("train", "validation", "test")}
    assert counts == {"train": 14041, "validation": 3250, "test": 3453}
    assert -(-counts["train"] // 16) == 878  # the card's steps per epoch


def test_long_sentences_are_split_not_cut(snippet, tiny_tokenizer):
    ds = load_split(DataConfig(source=str(snippet.parent), train_split="snippet"), "snippet")
    enc = encode(ds, tiny_tokenizer, DataConfig(max_length=16))
    assert enc.n_split > 0 and max(enc.lengths) <= 16
    # every word of every sentence is still labelled exactly once, in order
    for s in range(ds.num_rows):
        rows = np.flatnonzero(enc.source == s)
        words = np.concatenate([enc.word_index[r][enc.word_index[r] >= 0] for r in rows])
        assert words.tolist() == list(range(len(ds[s]["tokens"])))
        labels = np.concatenate([enc.labels[r][enc.labels[r] != IGNORE] for r in rows])
        assert labels.tolist() == ds[s]["ner_tags"]


def test_neighbours_context_adds_unlabelled_tokens_of_the_same_document_only(tiny_tokenizer):
    words = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"],
             ["The", "European", "Commission", "said", "on", "Thursday"], ["Only", "France"]]
    cols = {"tokens": words, "ner_tags": [[1] * len(w) for w in words], "document": [0, 0, 0, 1, 1]}
    none = encode(cols, tiny_tokenizer, DataConfig(max_length=64))
    ctx = encode(cols, tiny_tokenizer, DataConfig(max_length=64, context="neighbours", context_size=3))
    plain = tiny_tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    docs = {0: sum(plain[:3], []), 1: sum(plain[3:], [])}
    assert list(ctx.source) == list(none.source) == list(range(5))
    for i, (r_none, r_ctx) in enumerate(zip(none.input_ids, ctx.input_ids)):
        own = ctx.labels[i] != IGNORE
        # the sentence's own tokens, labels and word starts are those of context `none`
        assert list(r_ctx[own]) == list(r_none[none.labels[i] != IGNORE])
        assert list(ctx.word_index[i][ctx.word_index[i] >= 0]) == list(none.word_index[i][none.word_index[i] >= 0])
        inner = list(r_ctx[1:-1])
        doc = docs[cols["document"][i]]
        k = next(k for k in range(len(doc)) if doc[k:k + len(inner)] == inner)  # a slice of its own document
        sent = plain[i]
        start = doc.index(sent[0], sum(len(plain[j]) for j in range(i) if cols["document"][j] == cols["document"][i]))
        assert start - k == min(3, start) and len(inner) - len(sent) - (start - k) == min(3, len(doc) - start - len(sent))


def test_neighbours_context_never_exceeds_max_length(tiny_tokenizer):
    words = [["word"] * 9, ["other"] * 9, ["third"] * 9]
    cols = {"tokens": words, "ner_tags": [[0] * 9] * 3, "document": [0, 0, 0]}
    ctx = encode(cols, tiny_tokenizer, DataConfig(max_length=16, context="neighbours", context_size=64))
    assert max(len(r) for r in ctx.input_ids) <= 16
    assert all((lab != IGNORE).sum() >= 1 for lab in ctx.labels)


def test_an_unknown_split_lists_the_splits_the_data_has():
    with pytest.raises(DataError, match="no 'tset' split; the data has: train, validation, test"):
        load_split(DataConfig(), "tset")
