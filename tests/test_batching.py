"""Batching and shape policy: batch order, fitted buckets, the epoch plan, collation."""

import itertools

import numpy as np
import pytest

from flaxner.data.batching import (batch_order, bucket_for, collate, epoch_rows, fit_buckets, padding_stats,
                                   plan_epochs, run_buckets, view_rows)
from flaxner.config import DataConfig, TrainConfig
from flaxner.data.splits import DataError, encode, load_split
from flaxner.data.labels import IGNORE


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


def test_epoch_plan_is_the_batches_the_loop_draws(tiny_cfg, tiny_tokenizer):
    """The plan's batches are `batch_order`'s for each epoch, padded as `collate` pads them; `first_uses` from a
    resumed position follows them, within the steps left."""
    from flaxner.config import replace

    cfg = replace(tiny_cfg, data={"fit_buckets": 3}, train={"batch_size": 4, "epochs": 3, "seed": 3})
    enc = encode(load_split(cfg.data, "train"), tiny_tokenizer, cfg.data)
    plan = plan_epochs(enc.lengths, cfg.data, cfg.train)
    assert plan.buckets == run_buckets(cfg.data, cfg.train, enc.lengths) and len(plan.buckets) > 3
    assert plan.epochs == 3 and plan.steps_per_epoch == -(-len(enc.lengths) // 4)
    seen, expected, step = set(), [], 0
    for epoch in range(3):
        ref = batch_order(enc.lengths, 4, 3, epoch, "grouped")
        assert all((a == b).all() for a, b in zip(plan.orders[epoch], ref)) and len(ref) == plan.steps_per_epoch
        for b, idx in enumerate(ref):
            n = collate(enc, idx, 4, plan.buckets)["input_ids"].shape[1]
            assert plan.padded[epoch][b] == n
            if (epoch, b) >= (1, 5) and n not in seen:
                seen.add(n)
                expected.append((step, n))
            step += (epoch, b) >= (1, 5)
    got = plan.first_uses(1, 5)
    assert got == expected and len(got) >= 2
    assert plan.first_uses(1, 5, steps=got[1][0]) == got[:1]
    assert set(plan.shapes()) <= set(plan.buckets)


def _document_rows(tokenizer, dropout=0.0, context="neighbours"):
    words = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"],
             ["The", "European", "Commission", "said", "on", "Thursday"], ["Only", "France"]] * 8
    cols = {"tokens": words, "ner_tags": [list(range(1, len(w) + 1)) for w in words], "document": [0] * len(words)}
    return encode(cols, tokenizer, DataConfig(max_length=64, context=context, context_size=5,
                                              context_dropout=dropout))


def test_context_dropout_leaves_out_whole_sides_per_epoch_and_keeps_every_labelled_token(tiny_tokenizer):
    full, alone = _document_rows(tiny_tokenizer, 0.5), _document_rows(tiny_tokenizer, context="none")
    assert epoch_rows(full, 0.0, 42, 0) is full and epoch_rows(alone, 0.5, 42, 0) is alone
    seen = []
    for epoch in (0, 1):
        rows = epoch_rows(full, 0.5, 42, epoch)
        again = epoch_rows(full, 0.5, 42, epoch)  # a pure function of (seed, epoch): a resume sees these rows
        assert all((a == b).all() for a, b in zip(rows.input_ids, again.input_ids, strict=True))
        sides = []
        for i, (x, y, w) in enumerate(zip(rows.input_ids, rows.labels, rows.word_index, strict=True)):
            own = full.labels[i] != IGNORE
            # what the row predicts is untouched: the same tokens, labels and word starts as with whole context
            assert (x[y != IGNORE] == full.input_ids[i][own]).all() and (y[y != IGNORE] == full.labels[i][own]).all()
            assert (w[w >= 0] == full.word_index[i][full.word_index[i] >= 0]).all()
            left, n_own = int(rows.context_left[i]), int(full.own_lengths[i])
            right, full_right = len(x) - 2 - left - n_own, len(full.input_ids[i]) - 2 - full.context_left[i] - n_own
            assert left in (0, full.context_left[i]) and right in (0, full_right)  # a side is whole or gone
            assert (x[1:1 + left] == full.input_ids[i][1:1 + left]).all() and x[0] == full.input_ids[i][0]
            assert len(x) - 2 - left - right == n_own and x[-1] == full.input_ids[i][-1]
            sides.append((left == full.context_left[i], right == full_right))
        kept = np.array(sides)
        assert 0.3 < kept.mean() < 0.7  # about half of each side stays at p = 0.5
        seen.append(kept)
    assert (seen[0] != seen[1]).any()  # drawn anew every epoch
    gone = epoch_rows(full, 1.0, 42, 0)  # p = 1: the rows of context `none`
    assert all((a == b).all() for a, b in zip(gone.input_ids, alone.input_ids, strict=True))


def test_the_plan_batches_each_epoch_by_its_own_rows(tiny_tokenizer):
    enc = _document_rows(tiny_tokenizer, 0.5)
    tc = TrainConfig(batch_size=4, epochs=3, seed=7)
    per_epoch = [epoch_rows(enc, 0.5, 7, e) for e in range(3)]
    plan = plan_epochs([r.lengths for r in per_epoch], DataConfig(fit_buckets=4), tc)
    for e, rows in enumerate(per_epoch):
        assert [b.tolist() for b in plan.orders[e]] == [b.tolist() for b in batch_order(rows.lengths, 4, 7, e)]
        for b, idx in enumerate(plan.orders[e]):
            assert plan.collate(rows, idx)["input_ids"].shape == (4, plan.shape(e, b))


def test_context_views_frame_each_row_as_context_dropout_can(tiny_tokenizer):
    full, alone = _document_rows(tiny_tokenizer), _document_rows(tiny_tokenizer, context="none")
    assert view_rows(full, "full") is full and view_rows(alone, "left") is alone  # no context: nothing to leave out
    none, left, right = (view_rows(full, v) for v in ("none", "left", "right"))
    assert all((a == b).all() for a, b in zip(none.input_ids, alone.input_ids, strict=True))
    assert all((a == b).all() for a, b in zip(none.word_index, alone.word_index, strict=True))
    right_context = full.lengths - 2 - full.context_left - full.own_lengths
    assert (full.context_left > 0).sum() > 10 and (right_context > 0).sum() > 10  # context on both sides to leave out
    for i, x in enumerate(full.input_ids):
        lc, n = int(full.context_left[i]), int(full.own_lengths[i])
        assert (left.input_ids[i] == np.r_[x[:1 + lc + n], x[-1:]]).all() and left.context_left[i] == lc
        assert (right.input_ids[i] == np.r_[x[:1], x[1 + lc:]]).all() and right.context_left[i] == 0
        for v in (left, right):  # what a row predicts keeps its labels and word starts
            assert (v.labels[i][v.labels[i] != IGNORE] == full.labels[i][full.labels[i] != IGNORE]).all()
            assert (v.word_index[i][v.word_index[i] >= 0] == full.word_index[i][full.word_index[i] >= 0]).all()
    # the four views are the four framings context_dropout draws from
    drop = epoch_rows(full, 0.5, 42, 0)
    framings = {tuple(x) for v in (full, none, left, right) for x in map(tuple, v.input_ids)}
    assert {tuple(x) for x in drop.input_ids} <= framings
