"""Packed rows (`flaxner.models.masks`): segments sharing a row give each family the logits they give alone."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from flaxner.models.masks import packed_mask, segment_positions
from helpers import CONFIGS, model_and_params

SEGMENTS = [[5, 11, 3], [14], [2, 2, 9]]  # lengths of the segments of each row of 24 (the rest padding)


def test_segment_positions_and_mask():
    seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 2, 3, 3, 3, 3, 0]])
    np.testing.assert_array_equal(segment_positions(seg), [[0, 1, 2, 0, 1, 0, 1], [0, 0, 0, 1, 2, 3, 0]])
    m = np.asarray(packed_mask(seg))[:, 0]
    assert m.shape == (2, 7, 7)
    assert m[0, 0, 2] and not m[0, 0, 3] and m[0, 3, 4] and not m[0, 3, 5] and not m[0, 5, 5]
    assert m[1, 2, 5] and not m[1, 1, 2] and not m[1, 6].any()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_segment_gets_its_own_logits(name):
    model, params = model_and_params(name)
    pad = model.config.pad_token_id
    rng = np.random.RandomState(0)
    ids = np.full((len(SEGMENTS), 24), pad, np.int32)
    seg = np.zeros_like(ids)
    alone = []
    for r, lengths in enumerate(SEGMENTS):
        at = 0
        for s, n in enumerate(lengths):
            tokens = rng.randint(5, 100, n).astype(np.int32)
            ids[r, at:at + n], seg[r, at:at + n] = tokens, s + 1
            alone.append((r, at, tokens))
            at += n
    # each segment alone in a row of its own, with the plain key mask
    rows = np.full((len(alone), 24), pad, np.int32)
    mask = np.zeros_like(rows)
    for i, (_, _, tokens) in enumerate(alone):
        rows[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
    packed, own = jax.jit(lambda p: (model(ids, params=p, segment_ids=seg).logits,
                                     model(rows, mask, params=p).logits))(params)
    assert model.packs_rows and np.isfinite(packed).all()
    for i, (r, at, tokens) in enumerate(alone):
        np.testing.assert_allclose(packed[r, at:at + len(tokens)], own[i, :len(tokens)], atol=1e-5, rtol=0)


def test_a_convolution_across_tokens_cannot_pack():
    """deberta-v2-xlarge's conv mixes neighbouring tokens, so segments sharing a row would see each other."""
    model, _ = model_and_params("deberta-v3", conv_kernel_size=3, conv_act="gelu")
    assert not model.packs_rows


def test_one_segment_per_row_is_the_plain_mask():
    """Segment ids of 1 and 0 give the logits of the key mask they equal (a tagger row holding one window)."""
    model, params = model_and_params("bert")
    ids = np.random.RandomState(2).randint(5, 100, (2, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    plain = np.asarray(model(ids, mask, params=params).logits)
    packed = np.asarray(model(ids, params=params, segment_ids=mask).logits)
    np.testing.assert_allclose(packed[mask > 0], plain[mask > 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("pack_length", [0, 32, 128])
@pytest.mark.parametrize("flush", [False, True])
def test_packed_batches_place_every_window_once(pack_length, flush):
    from flaxner.tagging.packing import collate, pack
    from flaxner.tagging.windows import DocState, Row

    rng = np.random.RandomState(pack_length + flush)
    docs = [DocState(i, "", rng.randint(5, 100, n).astype(np.int32), np.arange(n, dtype=np.int32))
            for i, n in enumerate(rng.choice([1, 3, 9, 20, 30, 60, 126, 200], 300))]
    rows = [Row(d, 0, len(d.ids), 0, len(d.ids)) for d in docs]
    buckets = (16, 32, 64, 128, 256)
    batches, rest = pack(rows, buckets, 32, 1024, flush=flush, pack_length=pack_length)
    placed = [r for _, rs, _ in batches for r in rs]
    assert sorted(id(r) for r in placed + rest) == sorted(id(r) for r in rows)  # each window once
    assert not rest if flush else rest
    firsts = [min(rows.index(r) for r in rs) for _, rs, _ in batches]
    assert firsts == sorted(firsts)  # batches in the input order of their first windows
    for length, rs, n in batches:
        ids, mask = collate(rs, length, n, 1, 2, 0)
        assert ids.shape == (n, length) and n in (1024 // length, max(1, 1024 // length // 8))
        for r in rs:
            assert 0 <= r.slot < n and r.offset + r.length <= length
            assert r.length <= pack_length or (r.segment == 1 and r.offset == 0 and length == min(
                b for b in buckets if b >= r.length))
            a = r.offset
            assert ids[r.slot, a] == 1 and ids[r.slot, a + r.length - 1] == 2
            np.testing.assert_array_equal(ids[r.slot, a + 1:a + r.length - 1], r.doc.ids)
            np.testing.assert_array_equal(mask[r.slot, a:a + r.length], r.segment)
        for slot in range(n):  # segments 1, 2, ... in order, then padding
            m = mask[slot]
            used = m[m > 0]
            assert (np.diff(used) >= 0).all() and (m[len(used):] == 0).all()
            assert set(used) == set(range(1, len(set(used)) + 1))
    if pack_length == 128:  # short windows fill their rows
        short = [(length, rs, n) for length, rs, n in batches if length == 128]
        tokens = sum(r.length for _, rs, _ in short for r in rs)
        assert tokens / sum(n * length for length, _, n in short) > 0.9


def test_packed_rows_tag_as_one_window_a_row(tiny_ner_dir):
    """The same entities, scores within float rounding, with and without packing, and fewer shapes."""
    from flaxner.tagging.tagger import Tagger
    from helpers import SENTENCES, corpus, tag_config

    texts = corpus(150, seed=5) + [" ".join(SENTENCES) * 4] + SENTENCES
    got = {}
    for p in (0, 64):  # sentences share rows of 64, the long text's windows of 128 have one each
        tagger = Tagger.from_pretrained(tiny_ner_dir, tag_config(pack_length=p))
        got[p] = tagger.tag(texts)
        lengths = {s for _, s in tagger.shapes}
        assert tagger.forward.pack_length == p and (lengths == {64, 128} if p else min(lengths) < 64)
    key = lambda res: [[(e["label"], e["start"], e["end"]) for e in ents] for ents in res]  # noqa: E731
    assert key(got[0]) == key(got[64]) and sum(map(len, got[0])) > 50
    np.testing.assert_allclose([e["score"] for ents in got[64] for e in ents],
                               [e["score"] for ents in got[0] for e in ents], atol=2e-5)
