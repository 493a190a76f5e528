import numpy as np
import pytest

import itertools

from flaxner.config import DataConfig, TrainConfig
from flaxner.data import (DataError, batch_order, bucket_for, collate, encode, find_split_file, fit_buckets,
                          load_split, padding_stats, read_conll, run_buckets)
from flaxner.labels import CONLL_LABELS, IGNORE


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


def test_batch_order_covers_each_row_once_and_is_seeded():
    lengths = np.random.default_rng(0).integers(3, 60, 1003)
    for mode in ("grouped", "random"):
        a = batch_order(lengths, 16, seed=42, epoch=0, mode=mode)
        assert sorted(np.concatenate(a).tolist()) == list(range(1003))
        assert all(len(b) == 16 for b in a[:-1]) and len(a[-1]) == 1003 % 16
        b = batch_order(lengths, 16, seed=42, epoch=0, mode=mode)
        c = batch_order(lengths, 16, seed=42, epoch=1, mode=mode)
        assert all((x == y).all() for x, y in zip(a, b))
        assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c))


def test_grouping_cuts_padding():
    lengths = np.random.default_rng(1).integers(3, 60, 4000)
    buckets = (16, 24, 32, 40, 48, 64)

    class Fake:
        pass

    enc = Fake()
    enc.lengths = lengths
    grouped = padding_stats(enc, 16, buckets, mode="grouped")
    rand = padding_stats(enc, 16, buckets, mode="random")
    assert grouped["real_tokens"] == rand["real_tokens"] == lengths.sum()
    assert grouped["padding"] < rand["padding"] / 2


@pytest.mark.parametrize("seed", range(6))
def test_fit_buckets_is_the_least_padding_choice(seed):
    rng = np.random.default_rng(seed)
    maxima = rng.integers(3, 50, size=int(rng.integers(5, 40)))
    count = int(rng.integers(1, 5))
    multiple = int(rng.choice([1, 4]))
    got = fit_buckets(maxima, count, multiple)

    def cost(b):
        return sum(bucket_for(int(m), b) for m in maxima)

    vals = sorted({-(-int(m) // multiple) * multiple for m in maxima})
    assert all(b % multiple == 0 for b in got) and got[-1] == vals[-1] and len(got) == min(count, len(vals))
    best = min(cost([*c, vals[-1]]) for c in itertools.combinations(vals[:-1], min(count, len(vals)) - 1))
    assert cost(got) == best


def test_run_buckets_fit_the_run_and_keep_the_long_ones():
    lengths = np.random.default_rng(2).integers(3, 70, 3000)
    data, train = DataConfig(fit_buckets=6), TrainConfig(epochs=2, seed=5)
    fitted = run_buckets(data, train, lengths)
    assert fitted == run_buckets(data, train, lengths)  # a pure function: a resumed run pads the same way
    assert len([b for b in fitted if b <= lengths.max()]) == 6 and fitted[5] == lengths.max()
    assert fitted[6:] == tuple(b for b in data.buckets if b > lengths.max())

    class Fake:
        pass

    enc = Fake()
    enc.lengths = lengths
    assert padding_stats(enc, 16, fitted, seed=5)["padding"] < padding_stats(enc, 16, data.buckets, seed=5)["padding"]
    assert run_buckets(DataConfig(fit_buckets=0), train, lengths) == DataConfig().buckets


def test_collate_fixed_shape_and_masked_rows(snippet, tiny_tokenizer):
    ds = load_split(DataConfig(source=str(snippet.parent), train_split="snippet"), "snippet")
    enc = encode(ds, tiny_tokenizer, DataConfig())
    batch = collate(enc, np.array([1, 2]), 4, (8, 16, 32, 64, 128))
    assert batch["input_ids"].shape == (4, bucket_for(max(enc.lengths[[1, 2]]), (8, 16, 32, 64, 128)))
    assert batch["attention_mask"][2:].sum() == 0 and (batch["labels"][2:] == IGNORE).all()
    assert batch["attention_mask"][0].sum() == enc.lengths[1]
    with pytest.raises(DataError, match="exceeds the largest bucket"):
        bucket_for(600, (16, 512))
