"""Batching and shape policy: batch order, fitted buckets, the epoch plan, collation."""

import itertools

import numpy as np
import pytest

from flaxner.data.batching import (batch_order, bucket_for, collate, fit_buckets, padding_stats, plan_epochs,
                              run_buckets)
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
