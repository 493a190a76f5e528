"""The train step's public names: what JAX calls its two programs when it compiles them."""

from typing import NamedTuple

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
