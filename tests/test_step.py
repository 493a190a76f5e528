"""The train step: the public names JAX gives its programs, and gradient accumulation against one big batch."""

from typing import NamedTuple

import pytest

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flaxner.data.labels import IGNORE
from flaxner.runtime import Runtime
from flaxner.training.step import GRAD_STEP_NAME, TRAIN_STEP_NAMES, UPDATE_STEP_NAME, TrainStep, init_state


class _Out(NamedTuple):
    logits: jax.Array


def _apply(input_ids, attention_mask, params=None, dropout_rng=None, train=False):
    """A stand-in token classifier: an embedding table of label scores."""
    return _Out(params["table"][input_ids])


def test_the_exported_names_are_the_ones_jax_reports_when_compiling(compile_event_names):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rt = Runtime(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))
    tx = optax.sgd(0.1)
    state = init_state({"table": jnp.zeros((11, 3), jnp.float32)}, tx, 0, rt)
    rows = 2 * jax.device_count()
    ids = np.arange(rows * 4, dtype=np.int32).reshape(rows, 4) % 11
    batch = rt.put({"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "labels": np.where(ids % 2, ids % 3, IGNORE).astype(np.int32)})
    step = TrainStep(_apply, tx, rt)
    assert TRAIN_STEP_NAMES == (GRAD_STEP_NAME, UPDATE_STEP_NAME) == ("grad_step", "update_step")
    for fn, args, name in ((step.grad, (state, batch), GRAD_STEP_NAME),
                           (step.update, (state, state["params"]), UPDATE_STEP_NAME)):
        seen = compile_event_names(fn, *args)
        assert fn.__name__ == name
        assert ("jaxpr_trace_duration", name) in seen, seen  # traced under exactly this name
        # compiled under a name that contains it (JAX writes "jit(grad_step)"), which is what bench matches
        assert any(kind == "backend_compile_duration" and name in n for kind, n in seen), seen
        other = next(n for n in TRAIN_STEP_NAMES if n != name)
        assert not any(other in n for _, n in seen)  # the two programs' names do not match each other


def _no_dropout(model):
    """The model's forward with dropout off: a batch of 16 and two of 8 then see the same network."""
    return lambda ids, mask, **kw: model(ids, mask, **{**kw, "train": False})


@pytest.mark.parametrize("denom", [None, 37.0])
def test_two_accumulated_micro_batches_of_8_equal_one_batch_of_16(tiny_model, tiny_cfg, denom):
    from flaxner.runtime import setup_runtime
    from helpers import fixed_batch

    model, params = tiny_model
    rt = setup_runtime(tiny_cfg.train)
    tx = optax.sgd(0.5)  # linear in the gradients (Adam's first step is about sign(g), which hides them)
    big = fixed_batch(model.config.vocab_size, batch=16, seq=16, seed=3)
    big["attention_mask"][8:, 12:] = 0  # the halves have different labelled-token counts
    big["labels"][8:, 12:] = IGNORE
    halves = [{k: v[i:i + 8] for k, v in big.items()} for i in (0, 8)]
    one = TrainStep(_no_dropout(model), tx, rt, denom=denom)
    acc = TrainStep(_no_dropout(model), tx, rt, denom=None if denom is None else denom / 2, accum=2)
    s1, m1 = one(init_state(params, tx, 0, rt), rt.put(big))
    s2, m2 = acc(init_state(params, tx, 0, rt), [rt.put(h) for h in halves])
    assert int(s1["step"]) == int(s2["step"]) == 1 and int(m1["tokens"]) == int(m2["tokens"])
    if denom is None:  # the logged loss: the mean over all 16 rows' labelled tokens
        np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-5)
    moved = 0.0
    for a, b, p0 in zip(jax.tree_util.tree_leaves(s1["params"]), jax.tree_util.tree_leaves(s2["params"]),
                        jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.abs(np.asarray(a) - np.asarray(p0)).max()))
    assert moved > 1e-4  # the update did something to compare
    # an accumulated step whose micro-batches differ is not the same as one of them twice
    s3, _ = acc(init_state(params, tx, 0, rt), [rt.put(halves[0]), rt.put(halves[0])])
    assert any(not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7) for a, b in
               zip(jax.tree_util.tree_leaves(s1["params"]), jax.tree_util.tree_leaves(s3["params"])))
