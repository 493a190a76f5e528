"""`dtype: mixed` (flaxner.models.matmul): every Dense product bfloat16 x bfloat16 -> float32, forward and
gradients, for any family; close to float32, and a run trains, evaluates and tags with it."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxner.config import replace
from flaxner.models.matmul import MixedPrecision, bf16_kernels
from helpers import model_and_params


def _dots(fn, *args) -> list[tuple[str, str]]:
    """The operand dtypes of every dot_general in fn's jaxpr (nested jaxprs included)."""
    eqns = []

    def subjaxprs(params):  # the jaxprs an equation holds (jit, custom_vjp, scan bodies), on every jax version
        for v in params.values():
            for x in v if isinstance(v, (list, tuple)) else (v,):
                inner = getattr(x, "jaxpr", x)
                if hasattr(inner, "eqns"):
                    yield inner

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "dot_general":
                eqns.append(tuple(str(v.aval.dtype) for v in e.invars))
            for sub in subjaxprs(e.params):
                walk(sub)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return eqns


@pytest.mark.parametrize("name", ["bert", "modernbert", "deberta-v3"])
def test_mixed_forward_and_gradients_are_bf16_products_close_to_float32(name):
    model, params = model_and_params(name)
    mixed = MixedPrecision(model)
    ids = np.random.RandomState(0).randint(5, 100, (2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    labels = np.where(mask > 0, ids % len(model.config.labels), -100)

    def loss(p, m):
        logits = m(ids, mask, params=p).logits
        logp = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
        return -(picked * (labels >= 0)).sum() / (labels >= 0).sum()

    ref, got = model(ids, mask, params=params).logits, mixed(ids, mask, params=params).logits
    scale = float(jnp.abs(ref).max())
    assert 0 < float(jnp.abs(got - ref)[mask > 0].max()) < 0.02 * scale  # rounded, not the same program
    g_ref, g_got = jax.grad(loss)(params, model), jax.grad(loss)(params, mixed)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_got)):
        assert b.dtype == a.dtype and float(jnp.abs(a - b).max()) <= 0.05 * float(jnp.abs(a).max()) + 1e-6
    # every Dense product and its two gradient products are bfloat16 (DeBERTa calls its shared projections on the
    # position table too); the float32 ones are attention's
    dense = sum(1 for _ in re.finditer(r"'kernel'", str(jax.tree_util.tree_structure(params))))
    bf16 = sum(d == ("bfloat16", "bfloat16") for d in _dots(jax.grad(lambda p: loss(p, mixed)), params))
    assert bf16 % 3 == 0 and bf16 >= 3 * dense
    assert sum(d == ("bfloat16", "bfloat16") for d in _dots(lambda p: loss(p, model), params)) == 0


def test_mixed_survives_the_compact_vocabulary_and_takes_bf16_kernels():
    model, params = model_and_params("bert")
    mixed = MixedPrecision(model)
    small = mixed.resized(50)
    assert isinstance(small, MixedPrecision) and small.config.vocab_size == 50 and small.packs_rows
    cast = bf16_kernels(params)
    kinds = {(p[-1].key, x.dtype.name) for p, x in jax.tree_util.tree_flatten_with_path(cast)[0]}
    assert ("kernel", "bfloat16") in kinds and ("kernel", "float32") not in kinds and ("bias", "float32") in kinds
    ids = np.arange(5, 17, dtype=np.int32)[None]
    np.testing.assert_allclose(mixed(ids, params=cast).logits, mixed(ids, params=params).logits, atol=1e-6)


def test_a_mixed_run_trains_evaluates_and_tags(tiny_cfg, tmp_path, tiny_ner_dir):
    from flaxner.tagging.tagger import Tagger
    from flaxner.training.train import train
    from helpers import SENTENCES

    cfg = replace(tiny_cfg, model={"dtype": "mixed"}, train={"epochs": 1})
    summary = train(cfg, tmp_path / "run")
    last = summary.history[-1]
    assert np.isfinite(last["train_loss"]) and 0 <= last["f1"] <= 1
    got = Tagger(tmp_path / "run").tag(SENTENCES)  # the run's tag settings: model.dtype does not carry over
    plain = Tagger(tiny_ner_dir, dtype="float32").tag(SENTENCES)
    fast = Tagger(tiny_ner_dir, dtype="mixed").tag(SENTENCES)
    key = lambda res: [[(e["label"], e["start"], e["end"]) for e in ents] for ents in res]  # noqa: E731
    assert len(got) == len(SENTENCES) and key(fast) == key(plain)
