"""Packed rows: several segments (a tagger's windows, a batch's sentences) share one fixed-length row, so a batch
carries almost no padding. Segment ids say which tokens belong together: 1, 2, ... for the segments of a row in
order, 0 for padding. A token attends only to the tokens of its own segment and positions restart at 0 in each
segment, so a segment's logits are its logits alone in a row of its own (to float rounding).

Every family's module takes its `mask` either as the usual [batch, seq] key mask (1 = token: what a row of one
segment, every caller before packing, passes) or as the [batch, 1, seq, seq] boolean mask `packed_mask` builds;
`key_mask` and `token_mask` read both, so the layers need no flag."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxner.models.registry import family_of


def packed_mask(segment_ids) -> jax.Array:
    """[batch, 1, seq, seq] bool: query i sees key j when both are tokens of the same segment. A padding query
    sees nothing (its output, never read, is then the mean of the values)."""
    seg = jnp.asarray(segment_ids, jnp.int32)
    return ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0))[:, None]


def segment_positions(segment_ids) -> jax.Array:
    """[batch, seq] int32: each token's position within its segment (0 at its first token)."""
    seg = jnp.asarray(segment_ids, jnp.int32)
    idx = jnp.broadcast_to(jnp.arange(seg.shape[-1], dtype=jnp.int32), seg.shape)
    new = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=-1)
    return idx - jax.lax.cummax(jnp.where(new, idx, 0), axis=seg.ndim - 1)


def key_mask(mask) -> jax.Array:
    """The attention mask for `jax.nn.dot_product_attention`: [batch, 1, 1, seq] from a key mask, or the packed
    [batch, 1, seq, seq] mask as it is."""
    return (mask > 0)[:, None, None, :] if mask.ndim == 2 else mask


def token_mask(mask) -> jax.Array:
    """[batch, seq]: nonzero at tokens, from either form of mask (a packed mask's diagonal)."""
    return mask if mask.ndim == 2 else jnp.diagonal(mask[:, 0], axis1=-2, axis2=-1)


def model_mask(input_ids, attention_mask=None, segment_ids=None) -> jax.Array:
    """The mask a family's module takes: the packed mask when `segment_ids` are given, else the key mask (all
    ones when no mask is given)."""
    if segment_ids is not None:
        return packed_mask(segment_ids)
    return jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)


def plain_positions(input_ids, segment_ids=None) -> jax.Array:
    """0..seq-1 in each row, or from 0 in each segment of a packed row."""
    if segment_ids is not None:
        return segment_positions(segment_ids)
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1], dtype=jnp.int32), input_ids.shape)


def position_ids_for(input_ids, config, segment_ids=None):
    """BERT: 0..seq-1. RoBERTa/XLM-R: pad_token_id + running count of non-pad tokens (pads keep pad_token_id).
    Packed rows (`segment_ids`): the same, from the start of each segment."""
    if not family_of(config.model_type).positions_after_pad:
        return plain_positions(input_ids, segment_ids)
    if segment_ids is not None:
        real = (jnp.asarray(segment_ids) > 0).astype(jnp.int32)
        return (segment_positions(segment_ids) + 1) * real + config.pad_token_id
    real = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + config.pad_token_id


def pack_length_for(model, length: int) -> int:
    """`length` for a model that keeps packed segments apart (`packs_rows`), else 0: one segment a row (a model
    that mixes neighbouring tokens outside attention, e.g. DeBERTa's convolution)."""
    return length if getattr(model, "packs_rows", False) else 0


def batch_logits(apply_fn, batch: dict, **kw) -> jax.Array:
    """The logits [batch, seq, labels] of a collated batch: of packed rows when it carries `segment_ids`
    (`flaxner.data.packing`), else under its `attention_mask`."""
    if "segment_ids" in batch:
        return apply_fn(batch["input_ids"], segment_ids=batch["segment_ids"], **kw).logits
    return apply_fn(batch["input_ids"], batch["attention_mask"], **kw).logits
