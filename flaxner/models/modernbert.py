"""ModernBERT (answerdotai/ModernBERT-base, -large) for token classification, in Flax linen.

Pre-norm layers with rotary positions (no position table), a GeGLU MLP, and alternating attention: every
`global_attn_every_n_layers`-th layer (from layer 0) attends globally, the others within `local_attention // 2`
tokens on each side (`jax.nn.dot_product_attention`'s `local_window_size`, the same |i - j| <= w mask as
transformers'). The parameter tree is transformers' PyTorch tree renamed leaf by leaf (`model/layers/0/attn/Wqkv/
kernel` <-> `model.layers.0.attn.Wqkv.weight`), so model.safetensors loads and exports 1:1.

Scanned layers: the layer types differ (and layer 0 has no attn_norm), so the stack is layer 0, then groups of the
period of the remaining types (ModernBERT's: local, local, global) scanned over, then any remainder unrolled."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxner.models.bert import ACTIVATIONS, FlaxBertForTokenClassification, TokenClassifierOutput
from flaxner.models.modernbert_config import GLOBAL, LOCAL, ModernBertConfig, from_pytorch_names
from flaxner.models.masks import key_mask, model_mask, plain_positions

__all__ = ["FlaxModernBertForTokenClassification", "ModernBertConfig", "from_pytorch_names"]


def _init(cfg: ModernBertConfig, std: float):
    """transformers' init: normal(0, std) truncated at +-initializer_cutoff_factor * std."""
    c = cfg.initializer_cutoff_factor

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -c, c, shape, dtype)

    return init


def _dense(cfg: ModernBertConfig, features: int, bias: bool, std: float, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=dtype, kernel_init=_init(cfg, std), name=name)


def _norm(cfg: ModernBertConfig, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.norm_bias, dtype=dtype, name=name)


def _out_std(cfg: ModernBertConfig) -> float:
    return cfg.initializer_range / (2.0 * cfg.num_hidden_layers) ** 0.5


def rotary(position_ids, head_dim: int, theta: float):
    """(cos, sin) [batch, seq, 1, head_dim], float32, as transformers computes them (inverse frequencies in
    float32, the halves concatenated)."""
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def _rotate(x, cos, sin):
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    config: ModernBertConfig
    local: bool
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask, cos_sin):
        """h [batch, seq, hidden], mask [batch, seq] (1 = token) -> [batch, seq, hidden]."""
        cfg = self.config
        heads, hidden = cfg.num_attention_heads, cfg.hidden_size
        qkv = _dense(cfg, 3 * hidden, cfg.attention_bias, cfg.initializer_range, self.dtype, "Wqkv")(h)
        qkv = qkv.reshape(qkv.shape[:2] + (3, heads, hidden // heads))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = _rotate(q, *cos_sin), _rotate(k, *cos_sin)
        window = cfg.local_attention // 2 if self.local else None
        keys = key_mask(mask)
        if not self.deterministic and cfg.attention_dropout > 0:
            # Dropout on the probabilities needs them materialised: the window as an explicit mask.
            if window is not None:
                pos = jnp.arange(h.shape[1])
                keys = keys & (jnp.abs(pos[:, None] - pos[None, :]) <= window)[None, None]
            bias = jnp.where(keys, 0.0, jnp.finfo(self.dtype).min).astype(self.dtype)
            w = nn.attention.dot_product_attention_weights(
                q, k, bias=bias, dropout_rng=self.make_rng("dropout"), dropout_rate=cfg.attention_dropout,
                broadcast_dropout=False, deterministic=False, dtype=self.dtype)
            out = jnp.einsum("...hqk,...khd->...qhd", w, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=keys,
                                               local_window_size=None if window is None else (window, window))
        out = _dense(cfg, hidden, cfg.attention_bias, _out_std(cfg), self.dtype, "Wo")(out.reshape(h.shape))
        return nn.Dropout(cfg.attention_dropout, name="out_drop")(out, deterministic=self.deterministic)


class MLP(nn.Module):
    """GeGLU: Wi -> (input, gate) -> act(input) * gate -> Wo."""

    config: ModernBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        x, gate = jnp.split(_dense(cfg, 2 * cfg.intermediate_size, cfg.mlp_bias, cfg.initializer_range,
                                   self.dtype, "Wi")(h), 2, axis=-1)
        x = nn.Dropout(cfg.mlp_dropout, name="drop")(ACTIVATIONS[cfg.hidden_activation](x) * gate,
                                                     deterministic=self.deterministic)
        return _dense(cfg, cfg.hidden_size, cfg.mlp_bias, _out_std(cfg), self.dtype, "Wo")(x)


class Layer(nn.Module):
    """One pre-norm layer; layer 0 has no attn_norm (transformers' Identity: the embeddings are normed)."""

    config: ModernBertConfig
    local: bool
    first: bool = False
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask, rope):
        cfg = self.config
        x = h if self.first else _norm(cfg, self.dtype, "attn_norm")(h)
        h = h + Attention(cfg, self.local, self.dtype, self.deterministic, name="attn")(
            x, mask, rope[LOCAL if self.local else GLOBAL])
        return h + MLP(cfg, self.dtype, self.deterministic, name="mlp")(_norm(cfg, self.dtype, "mlp_norm")(h))


def scan_plan(types: tuple[str, ...]) -> tuple[int, int]:
    """(period, groups) of the layers after the first: the shortest period their types repeat with; `groups`
    whole periods are scanned, the remaining layers unrolled."""
    rest = types[1:]
    period = next((p for p in range(1, len(rest)) if all(rest[i] == rest[i % p] for i in range(len(rest)))),
                  max(len(rest), 1))
    return period, len(rest) // period


class Group(nn.Module):
    """One period of layers (static types), the body of the scan: `(h, mask, rope) -> (h, None)`."""

    config: ModernBertConfig
    types: tuple[str, ...]
    dtype: Any = jnp.float32
    deterministic: bool = True
    remat: bool = False

    @nn.compact
    def __call__(self, h, mask, rope):
        cls = nn.remat(Layer) if self.remat else Layer
        for j, typ in enumerate(self.types):
            h = cls(self.config, typ == LOCAL, False, self.dtype, self.deterministic, name=str(j))(h, mask, rope)
        return h, None


class Layers(nn.Module):
    """transformers' `layers`: `0`, `1`, ... unrolled; scanned: `0`, `groups/<j>` (stacked), then the rest."""

    config: ModernBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, h, mask, rope):
        types = self.config.attention_types
        cls = nn.remat(Layer) if self.remat else Layer
        layer = lambda i: cls(self.config, types[i] == LOCAL, i == 0, self.dtype,  # noqa: E731
                              self.deterministic, name=str(i))
        if not self.scan_layers:
            for i in range(len(types)):
                h = layer(i)(h, mask, rope)
            return h
        period, groups = scan_plan(types)
        h = layer(0)(h, mask, rope)
        block = nn.scan(Group, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=groups)
        h, _ = block(self.config, types[1:1 + period], self.dtype, self.deterministic, self.remat,
                     name="groups")(h, mask, rope)
        for i in range(1 + period * groups, len(types)):
            h = layer(i)(h, mask, rope)
        return h


def stack_groups(params: dict, types: tuple[str, ...]) -> dict:
    """Per-layer tree (`model/layers/<i>`) -> the scanned one (`model/layers/groups/<j>` stacked over groups)."""
    period, groups = scan_plan(types)
    per = params["model"]["layers"]
    firsts = [1 + g * period for g in range(groups)]
    layers = {k: v for k, v in per.items() if not 1 <= int(k) < 1 + period * groups}
    layers["groups"] = {str(j): jax.tree.map(lambda *xs: jnp.stack(xs), *[per[str(f + j)] for f in firsts])
                        for j in range(period)}
    return {**params, "model": {**params["model"], "layers": layers}}


class Embeddings(nn.Module):
    config: ModernBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.config
        h = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype,
                     embedding_init=_init(cfg, cfg.initializer_range), name="tok_embeddings")(input_ids)
        h = _norm(cfg, self.dtype, "norm")(h)
        return nn.Dropout(cfg.embedding_dropout, name="drop")(h, deterministic=self.deterministic)


class Backbone(nn.Module):
    """transformers' ModernBertModel: embeddings -> layers -> final_norm."""

    config: ModernBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, position_ids):
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        rope = {GLOBAL: rotary(position_ids, head_dim, cfg.global_rope_theta),
                LOCAL: rotary(position_ids, head_dim, cfg.local_rope_theta)}
        h = Embeddings(cfg, self.dtype, self.deterministic, name="embeddings")(input_ids)
        h = Layers(cfg, self.dtype, self.deterministic, self.scan_layers, self.remat, name="layers")(h, mask, rope)
        return _norm(cfg, self.dtype, "final_norm")(h)


class Head(nn.Module):
    """transformers' ModernBertPredictionHead: dense -> act -> norm."""

    config: ModernBertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        h = _dense(cfg, cfg.hidden_size, cfg.classifier_bias, _out_std(cfg), self.dtype, "dense")(h)
        return _norm(cfg, self.dtype, "norm")(ACTIVATIONS[cfg.classifier_activation](h))


class TokenClassifier(nn.Module):
    """`model` -> `head` -> drop -> `classifier`: logits [batch, seq, num_labels]."""

    config: ModernBertConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, position_ids, deterministic: bool = True):
        cfg = self.config
        h = Backbone(cfg, self.dtype, deterministic, self.scan_layers, self.remat, name="model")(
            input_ids, mask, position_ids)
        h = Head(cfg, self.dtype, name="head")(h)
        h = nn.Dropout(cfg.classifier_dropout, name="drop")(h, deterministic=deterministic)
        return nn.Dense(cfg.num_labels, dtype=self.dtype, kernel_init=_init(cfg, cfg.hidden_size ** -0.5),
                        name="classifier")(h)


class FlaxModernBertForTokenClassification(FlaxBertForTokenClassification):
    """The model other modules use (BERT's interface: `model(input_ids, attention_mask, params=...)`, `.logits`);
    `params` is always the per-layer tree. `token_type_ids` is ignored (ModernBERT has none)."""

    def __init__(self, config: ModernBertConfig, dtype=jnp.float32, scan_layers: bool = False, remat: bool = False):
        self.config, self.dtype = config, dtype
        self.scan_layers, self.remat = scan_layers, remat
        self.module = TokenClassifier(config, dtype, scan_layers, remat)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, params=None,
                 dropout_rng=None, train: bool = False, segment_ids=None) -> TokenClassifierOutput:
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = model_mask(input_ids, attention_mask, segment_ids)
        if position_ids is None:
            position_ids = plain_positions(input_ids, segment_ids)
        if self.scan_layers:
            params = stack_groups(params, self.config.attention_types)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        logits = self.module.apply({"params": params}, input_ids, mask, position_ids, deterministic=not train,
                                   rngs=rngs)
        return TokenClassifierOutput(logits=logits)

    def _init(self, rng):
        ids = jnp.zeros((1, 1), jnp.int32)
        return TokenClassifier(self.config, self.dtype).init(rng, ids, ids, ids, deterministic=True)["params"]

    def init_params(self, seed: int = 0) -> dict:
        """Fresh weights as transformers initialises them (truncated normals, unit norms, zero biases)."""
        return jax.jit(self._init)(jax.random.PRNGKey(seed))

    def params_shape(self) -> dict:
        return jax.eval_shape(lambda: self._init(jax.random.PRNGKey(0)))  # the key traced, not compiled
