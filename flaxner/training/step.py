"""The optimizer and the train step: Adam + linear schedule, the head's loss, and the step as two jitted programs
(gradients per batch shape, the update once), data-parallel over the run's mesh; with `train.grad_accum`, the
gradients of several micro-batches summed into one update."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxner.config import TrainConfig
from flaxner.models.heads import token_loss
from flaxner.models.masks import batch_logits
from flaxner.runtime import Runtime


def warmup_steps(tc: TrainConfig, total_steps: int) -> int:
    """`train.warmup_steps`, or `train.warmup_ratio` of the run's optimizer steps rounded up (as the HF Trainer)."""
    return tc.warmup_steps or math.ceil(tc.warmup_ratio * total_steps)


def make_schedule(tc: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up (none by default) then linear decay to 0 at `total_steps`, as the HF Trainer's; steps are
    optimizer steps (an accumulated step counts once)."""
    warm = warmup_steps(tc, total_steps)
    decay = optax.linear_schedule(tc.learning_rate, 0.0, max(total_steps - warm, 1))
    if not warm:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, tc.learning_rate, warm), decay], [warm])


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
    """The model's forward (packed rows or not: `batch_logits`) and the head's loss (`heads.token_loss`, which
    explains `denom`).
    Returns (loss to differentiate, (labelled tokens, their mean loss))."""
    logits = batch_logits(apply_fn, batch, params=params, dropout_rng=dropout_rng, train=train)
    return token_loss(logits, batch["labels"], denom)


def grad_step(state: dict, batch: dict, micro=None, apply_fn: Callable = None, denom: float | None = None):
    """Gradients of the loss on one batch; the dropout key is derived from the run key and the step (and the
    micro-batch's index `micro` within an accumulated step), so a resumed run draws the same masks. A micro-batch
    (denom 1: the summed loss) reports its summed loss; the update divides the sum of its micro-batches' gradients."""
    rng = jax.random.fold_in(state["rng"], state["step"])
    if micro is not None:
        rng = jax.random.fold_in(rng, micro)
    (total, (count, loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, rng,
                                                                              apply_fn, denom=denom)
    return grads, ({"loss": loss, "tokens": count} if micro is None else {"loss_sum": total, "tokens": count})


def accumulate_step(acc, new):
    """(gradients, metrics) of the micro-batches so far plus one more's."""
    return jax.tree.map(jnp.add, acc, new)


def update_step(state: dict, grads, divisor=None, tx: optax.GradientTransformation = None):
    """The optimizer update (of the summed gradients / `divisor` when accumulating); returns the new state and
    the gradients' global norm."""
    if divisor is not None:
        grads = jax.tree.map(lambda g: g / divisor.astype(g.dtype), grads)
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
    """One optimizer step (`grad_step` then `update_step`) as two executables: the gradients, compiled once per
    batch shape, and the optimizer update, compiled once for the run since it does not depend on the shape (it is
    40% of a fused step's compile time at MiniLM size, and a run compiles a dozen shapes). The state is donated to
    the update; the state stays replicated and the batch is split over `data`.

    With `accum` > 1 a step takes a list of up to `accum` micro-batches: their summed-loss gradients are added
    (`accumulate_step`) and the update divides them by all their labelled tokens (`denom` None: the loss is their
    mean, as one batch of all their rows) or by `denom` x `accum` (`denom` is per micro-batch)."""

    def __init__(self, apply_fn: Callable, tx: optax.GradientTransformation, rt: Runtime,
                 denom: float | None = None, accum: int = 1):
        rep, bs = rt.replicated, rt.batch_sharding
        self.accum, self.denom = accum, denom
        scalar = functools.partial(jax.ShapeDtypeStruct, (), sharding=rep)
        # what the compile-ahead passes after (state, batch) and (state, grads)
        self.grad_extra, self.update_extra = ((), ()) if accum == 1 else \
            ((scalar(jnp.int32),), (scalar(jnp.float32),))
        self.grad = jax.jit(functools.partial(grad_step, apply_fn=apply_fn, denom=denom if accum == 1 else 1.0),
                            in_shardings=(rep, bs) + (rep,) * len(self.grad_extra), out_shardings=(rep, rep))
        self.update = jax.jit(functools.partial(update_step, tx=tx), donate_argnums=0,
                              in_shardings=(rep, rep) + (rep,) * len(self.update_extra), out_shardings=(rep, rep))
        self.add = jax.jit(accumulate_step, donate_argnums=0, in_shardings=(rep, rep), out_shardings=rep)

    def __call__(self, state: dict, batch: dict | list[dict]) -> tuple[dict, dict]:
        if self.accum == 1:
            grads, metrics = self.grad(state, batch[0] if isinstance(batch, list) else batch)
            state, metrics["grad_norm"] = self.update(state, grads)
            return state, metrics
        acc = None
        for i, b in enumerate(batch if isinstance(batch, list) else [batch]):
            out = self.grad(state, b, np.int32(i))
            acc = out if acc is None else self.add(acc, out)
        grads, m = acc
        tokens = jnp.maximum(m["tokens"], 1).astype(jnp.float32)
        divisor = tokens if self.denom is None else np.float32(self.denom * self.accum)
        state, norm = self.update(state, grads, divisor)
        return state, {"loss": m["loss_sum"] / tokens, "tokens": m["tokens"], "grad_norm": norm}


def init_state(params, tx: optax.GradientTransformation, seed: int, rt: Runtime) -> dict:
    """Replicated train state; `params` are copied, since the step donates (deletes) the state it is given."""
    params = jax.device_put(params, rt.replicated, may_alias=False)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(seed)}
    return jax.device_put(state, rt.replicated)
