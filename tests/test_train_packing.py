"""Packed training and evaluation rows (`data.pack_length`): a batch's sentences share rows, with the same loss,
gradients, predictions and resumable plan as one sentence a row."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from flaxner.config import DataConfig, TrainConfig, replace
from flaxner.data.batching import ROW_COUNTS, collate, eval_batches, plan_epochs
from flaxner.data.labels import IGNORE
from flaxner.data.packing import best_fit, collate_packed, real_tokens
from flaxner.data.splits import Encoded
from flaxner.training.step import loss_fn
from flaxner.training.train import train
from helpers import assert_same_run, interrupted_then_resumed, model_and_params

BUCKETS = (8, 16, 24, 32, 48, 64)


def encoded(lengths, vocab: int = 100, seed: int = 0) -> Encoded:
    """Rows `[CLS] ... [SEP]` (ids 3 and 4, no family's padding id) of these lengths with random ids and labels (specials and every third token
    unlabelled), one word per labelled token."""
    rng = np.random.default_rng(seed)
    ids, labels, words = [], [], []
    for n in lengths:
        ids.append(np.concatenate([[3], rng.integers(5, vocab, n - 2), [4]]).astype(np.int32))
        lab = rng.integers(0, 5, n).astype(np.int32)
        lab[0] = lab[-1] = IGNORE
        lab[1::3] = IGNORE
        labels.append(lab)
        words.append(np.where(lab != IGNORE, np.cumsum(lab != IGNORE) - 1, -1).astype(np.int32))
    return Encoded(ids, labels, words, np.arange(len(lengths)), np.array([int((w >= 0).sum()) for w in words]))


@pytest.mark.parametrize("name, denom", [("bert", None), ("bert", 7.0), ("roberta", None), ("distilbert", None)])
def test_packed_batch_has_the_loss_and_gradients_of_the_plain_one(name, denom):
    """`denom`: loss_norm dataset's constant divisor (None: the batch's mean)."""
    model, params = model_and_params(name)
    enc = encoded([3, 5, 9, 12, 20, 30, 31, 7, 4, 16, 2, 11], seed=len(name))
    data, tc = DataConfig(buckets=BUCKETS, fit_buckets=0, pack_length=32), TrainConfig(batch_size=12, epochs=1)
    plan = plan_epochs(enc.lengths, data, tc)
    idx = plan.orders[0][0]
    plain, packed = collate(enc, idx, 12, BUCKETS, model.config.pad_token_id), plan.collate(enc, idx, model.config.pad_token_id)
    assert packed["input_ids"].shape[0] < 12 and "segment_ids" in packed and "attention_mask" not in packed

    def value_and_grad(batch):
        f = jax.value_and_grad(lambda p: loss_fn(p, batch, None, model.__call__, train=False, denom=denom),
                               has_aux=True)
        return jax.jit(f)(params)

    (loss_a, (count_a, mean_a)), grads_a = value_and_grad(plain)
    (loss_b, (count_b, mean_b)), grads_b = value_and_grad(packed)
    assert int(count_a) == int(count_b) == int(sum((enc.labels[i] != IGNORE).sum() for i in idx))
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=2e-5)
    np.testing.assert_allclose(float(mean_b), float(mean_a), rtol=2e-5)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-6)


def test_every_row_placed_once_with_its_labels_in_few_shapes():
    rng = np.random.default_rng(3)
    lengths = rng.choice([2, 3, 5, 8, 13, 20, 27, 33, 40, 60], 500)
    enc = encoded(lengths)
    data = DataConfig(buckets=BUCKETS, fit_buckets=3, pack_length=32)
    tc = TrainConfig(batch_size=16, epochs=3, seed=5)
    plan = plan_epochs(enc.lengths, data, tc, devices=2)
    again = plan_epochs(enc.lengths, data, tc, devices=2)  # a pure function: a resumed run packs the same
    assert (plan.padded, plan.rows, plan.row_counts) == (again.padded, again.rows, again.row_counts)
    plain = plan_epochs(enc.lengths, DataConfig(buckets=BUCKETS, fit_buckets=3), tc)
    assert all((a == b).all() for x, y in zip(plan.orders, plain.orders) for a, b in zip(x, y))  # same batches
    lengths_used = {n for _, n in plan.shapes()}
    assert len(plan.shapes()) <= ROW_COUNTS * len(lengths_used) and 32 in lengths_used
    assert len([s for s in plan.shapes() if s[1] == 32]) <= ROW_COUNTS
    for e in range(plan.epochs):
        for b, idx in enumerate(plan.orders[e]):
            batch = plan.collate(enc, idx)
            rows, n = plan.shape(e, b)
            assert batch["input_ids"].shape == (rows, n) and rows % 2 == 0 and rows <= 16
            longest = enc.lengths[idx].max()
            assert n == (32 if longest <= 32 else min(x for x in plan.buckets if x >= longest))
            assert real_tokens(batch) == enc.lengths[idx].sum()
            found = []
            for r in range(rows):
                seg = batch["segment_ids"][r]
                used = seg[seg > 0]
                assert (seg[len(used):] == 0).all() and (np.diff(used) >= 0).all()
                for s in range(1, int(used.max(initial=0)) + 1):
                    at = np.flatnonzero(seg == s)
                    found.append((tuple(batch["input_ids"][r, at]), tuple(batch["labels"][r, at])))
            # each sentence once with its labels, and nothing else
            assert sorted(found) == sorted((tuple(enc.input_ids[i]), tuple(enc.labels[i])) for i in idx)
            assert (batch["labels"][batch["segment_ids"] == 0] == IGNORE).all()
    # packing moves padding around, it does not count tokens differently
    assert plan.padding_stats(enc.lengths)["real_tokens"] == plain.padding_stats(enc.lengths)["real_tokens"]


def test_eval_batches_place_every_row_once():
    rng = np.random.default_rng(4)
    lengths = rng.choice([2, 4, 9, 17, 30, 33, 50], 200)
    for pack in (0, 32):
        batches = eval_batches(lengths, 8, BUCKETS, pack)
        placed = [i for _, slots in batches for s in slots for i in s]
        assert sorted(placed) == list(range(200))
        for n, slots in batches:
            assert len(slots) <= 8 and all(sum(lengths[i] for i in s) <= n for s in slots)
            assert n == pack or len({len(s) for s in slots}) == 1 and n >= max(lengths[s[0]] for s in slots)
        assert {n for n, _ in batches} <= set(BUCKETS) | {pack}
    plain = eval_batches(lengths, 8, BUCKETS)
    order = np.argsort(-lengths, kind="stable")  # today's evaluation batches
    assert [[s[0] for s in slots] for _, slots in plain] == [list(order[i:i + 8]) for i in range(0, 200, 8)]


def test_best_fit_fills_the_fullest_row_that_holds_an_item():
    assert best_fit([5, 4, 3, 2, 2], 7) == [[0, 3], [1, 2], [4]]
    assert best_fit([4, 4, 3], 8) == [[0, 1], [2]]
    enc = encoded([4, 3])
    batch = collate_packed(enc, [[1, 0]], 2, 8, pad_id=9)
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 0], [0] * 8])
    assert (batch["input_ids"][1] == 9).all() and batch["input_ids"][0, 3] == 3


def test_pack_length_zero_is_todays_batches():
    enc = encoded(np.random.default_rng(5).choice([3, 9, 14, 40], 70))
    tc = TrainConfig(batch_size=8, epochs=2)
    plan = plan_epochs(enc.lengths, DataConfig(buckets=BUCKETS, fit_buckets=2), tc)
    assert not plan.pack_length and not plan.rows and plan.shapes() == sorted(set(plan.shapes()))
    for e in range(2):
        for b, idx in enumerate(plan.orders[e]):
            got, ref = plan.collate(enc, idx), collate(enc, idx, 8, plan.buckets)
            assert got.keys() == ref.keys() and plan.shape(e, b) == ref["input_ids"].shape[1]
            for k in ref:
                assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k])


def test_eval_scores_the_same_packed(tiny_ner_dir):
    """The tiny model's predictions, F1 and loss on CoNLL validation, one sentence a row and packed."""
    from flaxner.training.evaluate import predict_split

    got = {p: predict_split(tiny_ner_dir, limit=120, data=DataConfig(limit=120, pack_length=p), batch_size=8)
           for p in (0, 48)}
    assert got[0].pred == got[48].pred and got[0].metrics["f1"] == got[48].metrics["f1"] > 0
    assert got[48].metrics["loss"] == pytest.approx(got[0].metrics["loss"], rel=1e-5)


def test_a_packed_run_resumes_exactly(tiny_cfg, tmp_path, monkeypatch):
    cfg = replace(tiny_cfg, data={"pack_length": 32}, train={"eval_test": False})
    ref = train(cfg, tmp_path / "straight")
    shapes = [tuple(s) for s in ref.compiled_train_shapes]
    assert all(n == 32 or n > 32 for _, n in shapes) and len(shapes) <= ROW_COUNTS + 2
    assert any(rows < cfg.train.batch_size for rows, n in shapes if n == 32)
    out = tmp_path / "resumed"
    summary = interrupted_then_resumed(cfg, out, monkeypatch, compile_workers=2)
    assert summary.steps == ref.steps == 12
    assert_same_run(summary, ref, out)
    assert all(len(s) == 2 for s in json.loads((out / "summary.json").read_text())["compiled_train_shapes"])
