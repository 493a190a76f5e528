"""The optimizer and the train step: Adam + linear schedule, the head's loss, and the step as two jitted programs
(gradients per batch shape, the update once), data-parallel over the run's mesh."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from flaxner.config import TrainConfig
from flaxner.models.heads import token_loss
from flaxner.runtime import Runtime


def make_schedule(tc: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up (none by default) then linear decay to 0 at `total_steps`, as the HF Trainer's."""
    decay = optax.linear_schedule(tc.learning_rate, 0.0, max(total_steps - tc.warmup_steps, 1))
    if not tc.warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, tc.learning_rate, tc.warmup_steps), decay],
                                [tc.warmup_steps])


def make_optimizer(tc: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam(W) on the linear schedule, as the HF Trainer's defaults."""
    schedule = make_schedule(tc, total_steps)
    # The Trainer exempts biases and LayerNorm weights from weight decay.
    decay_mask = functools.partial(jax.tree_util.tree_map_with_path,
                                   lambda path, _: not any(str(getattr(k, "key", "")).lower() in ("bias", "scale")
                                                           for k in path))
    adam = optax.adamw(schedule, tc.adam_b1, tc.adam_b2, tc.adam_eps, weight_decay=tc.weight_decay,
                       mask=decay_mask) if tc.weight_decay else optax.adam(schedule, tc.adam_b1, tc.adam_b2, tc.adam_eps)
    return optax.chain(optax.clip_by_global_norm(tc.max_grad_norm), adam) if tc.max_grad_norm else adam


def loss_fn(params, batch: dict, dropout_rng, apply_fn: Callable, train: bool = True, denom: float | None = None):
    """The model's forward and the head's loss (`flaxner.models.heads.token_loss`, which explains `denom`).
    Returns (loss to differentiate, (labelled tokens, their mean loss))."""
    logits = apply_fn(batch["input_ids"], batch["attention_mask"], params=params, dropout_rng=dropout_rng,
                      train=train).logits  # [batch, seq, num_labels]
    return token_loss(logits, batch["labels"], denom)


def grad_step(state: dict, batch: dict, apply_fn: Callable, denom: float | None = None):
    """Gradients of the loss on one batch; the dropout key is derived from the run key and the step, so a
    resumed run draws the same masks."""
    rng = jax.random.fold_in(state["rng"], state["step"])
    (_, (count, loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, rng, apply_fn,
                                                                          denom=denom)
    return grads, {"loss": loss, "tokens": count}


def update_step(state: dict, grads, tx: optax.GradientTransformation):
    """The optimizer update; returns the new state and the gradients' global norm."""
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}, \
        optax.global_norm(grads)


# The names JAX gives TrainStep's two programs in its compile logs and monitoring events (`fun_name`, e.g.
# "grad_step" when tracing, "jit(grad_step)" when compiling): public, so that compile counters match them by name.
GRAD_STEP_NAME = grad_step.__name__
UPDATE_STEP_NAME = update_step.__name__
TRAIN_STEP_NAMES = (GRAD_STEP_NAME, UPDATE_STEP_NAME)


class TrainStep:
    """One optimizer step (`grad_step` then `update_step`) as two executables: the gradients, compiled once per batch shape, and the optimizer update,
    compiled once for the run since it does not depend on the shape (it is 40% of a fused step's compile time
    at MiniLM size, and a run compiles a dozen shapes). The state is donated to the update;
    the state stays replicated and the batch is split over `data`."""

    def __init__(self, apply_fn: Callable, tx: optax.GradientTransformation, rt: Runtime,
                 denom: float | None = None):
        rep = rt.replicated
        self.grad = jax.jit(functools.partial(grad_step, apply_fn=apply_fn, denom=denom),
                            in_shardings=(rep, rt.batch_sharding), out_shardings=(rep, rep))
        self.update = jax.jit(functools.partial(update_step, tx=tx), donate_argnums=0,
                              in_shardings=(rep, rep), out_shardings=(rep, rep))

    def __call__(self, state: dict, batch: dict) -> tuple[dict, dict]:
        grads, metrics = self.grad(state, batch)
        state, metrics["grad_norm"] = self.update(state, grads)
        return state, metrics


def init_state(params, tx: optax.GradientTransformation, seed: int, rt: Runtime) -> dict:
    """Replicated train state; `params` are copied, since the step donates (deletes) the state it is given."""
    params = jax.device_put(params, rt.replicated, may_alias=False)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(seed)}
    return jax.device_put(state, rt.replicated)
