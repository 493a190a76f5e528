"""The output head: the one place that turns a token classifier's logits into a loss, predictions and scores.

Training (`flaxner.training.step`), evaluation (`flaxner.training.evaluate`) and tagging
(`flaxner.tagging.forward`) call these pure functions inside their jitted programs. Logits are [batch, seq, labels]
in the model's dtype; every function computes in float32. A CRF head would replace these functions (and add a
config key to pick it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxner.data.labels import IGNORE


def masked_ce(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy of every token [batch, seq] (0 where unlabelled) and the mask of labelled tokens
    (`labels != IGNORE`: padding, specials and later sub-tokens are unlabelled)."""
    import optax  # here: tagging (tag_scores) does not import it

    mask = labels != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(mask, labels, 0))
    return ce, mask


def token_loss(logits: jax.Array, labels: jax.Array, denom: float | None = None):
    """The training loss: cross-entropy summed over labelled tokens and divided by their count, so padding and
    later sub-tokens weigh nothing (what PyTorch's ignore_index=-100 mean does). With `denom` the sum is divided
    by that constant instead (the mean labelled tokens per batch, `flaxner.training.train.loss_denominator`), so
    that every token weighs the same whatever its batch.
    Returns (loss to differentiate, (labelled tokens, their mean loss))."""
    ce, mask = masked_ce(logits, labels)
    count = jnp.sum(mask)
    mean = jnp.sum(ce * mask) / jnp.maximum(count, 1)
    return (mean if denom is None else jnp.sum(ce * mask) / denom), (count, mean)


def loss_sum(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed cross-entropy over labelled tokens, labelled tokens): evaluation adds these over batches."""
    ce, mask = masked_ce(logits, labels)
    return jnp.sum(ce * mask), jnp.sum(mask)


def predict_ids(logits: jax.Array) -> jax.Array:
    """The label id of every token, int32 [batch, seq]."""
    return jnp.argmax(logits.astype(jnp.float32), -1).astype(jnp.int32)


def tag_scores(logits: jax.Array, aggregation: str):
    """What the tagger reads: for "first", (label ids int32, their probability float32), each [batch, seq];
    otherwise the probabilities of every label, float32 [batch, seq, labels], which the words aggregate."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if aggregation == "first":
        return probs.argmax(-1).astype(jnp.int32), probs.max(-1)
    return probs
