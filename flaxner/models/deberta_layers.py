"""DeBERTa-v2's layers in Flax linen (flaxner/models/deberta.py is the family's module and says how the attention
is computed); module and parameter names are PyTorch's `DebertaV2ForTokenClassification`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxner.models.bert import ACTIVATIONS as BERT_ACTIVATIONS
from flaxner.models.masks import key_mask, token_mask

if TYPE_CHECKING:
    from flaxner.models.deberta import DebertaV2Config

ACTIVATIONS = {**BERT_ACTIVATIONS, "tanh": jnp.tanh}  # conv_act's default is tanh
PREFIX = "deberta"


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """[length, length] relative distance query - key, log-bucketed past buckets // 2 as the reference does (in
    float32, so the bucket edges round alike)."""
    ids = np.arange(length, dtype=np.int64)
    rel = ids[:, None] - ids[None, :]
    if buckets <= 0 or max_position <= 0:
        return rel.astype(np.int32)
    mid = buckets // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
    log_pos = np.ceil(np.log(abs_pos / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
                      * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int32)


def _dense(cfg, features: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.initializers.normal(cfg.initializer_range))


def _layer_norm(cfg, dtype, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name=name)


class _Part(nn.Module):
    """The fields every module here has."""

    config: DebertaV2Config
    dtype: Any = jnp.float32
    deterministic: bool = True


class Embeddings(_Part):
    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids):
        cfg = self.config
        width = cfg.embedding_size or cfg.hidden_size
        embed = lambda n, name: nn.Embed(n, width, dtype=self.dtype, name=name,  # noqa: E731
                                         embedding_init=nn.initializers.normal(cfg.initializer_range))
        h = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        if cfg.position_biased_input:
            h = h + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
        if cfg.type_vocab_size > 0:
            h = h + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        if width != cfg.hidden_size:
            h = _dense(cfg, cfg.hidden_size, self.dtype, "embed_proj", use_bias=False)(h)
        h = _layer_norm(cfg, self.dtype)(h) * token_mask(mask)[..., None].astype(self.dtype)
        return nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=self.deterministic)


class SelfAttention(_Part):
    """Disentangled self-attention: content scores plus c2p / p2c relative terms as the attention bias."""

    @nn.compact
    def __call__(self, h, mask, rel):
        """h [batch, seq, hidden], mask [batch, seq] (1 = token), rel [2 * span, hidden] -> [batch, seq, hidden]."""
        cfg = self.config
        heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        split = lambda x: x.reshape(x.shape[:-1] + (heads, d))  # noqa: E731
        proj = {n: _dense(cfg, cfg.hidden_size, self.dtype, n) for n in ("query_proj", "key_proj", "value_proj")}
        q, k, v = (split(proj[n](h)) for n in proj)
        scale = float(np.sqrt(np.float32(d) * np.float32(1 + len(cfg.pos_att_type))))
        bias = None
        if cfg.relative_attention and cfg.pos_att_type:
            rel = nn.Dropout(cfg.hidden_dropout_prob)(rel, deterministic=self.deterministic)
            pos_proj = ({"c2p": proj["key_proj"], "p2c": proj["query_proj"]} if cfg.share_att_key else
                        {t: _dense(cfg, cfg.hidden_size, self.dtype, n) for t, n in
                         (("c2p", "pos_key_proj"), ("p2c", "pos_query_proj")) if t in cfg.pos_att_type})
            seq, span = h.shape[1], cfg.span
            rpos = relative_positions(seq, cfg.position_buckets, cfg.max_relative_positions)
            bias = jnp.zeros((), self.dtype)
            if "c2p" in cfg.pos_att_type:  # query i against the position key of bucket(i - j)
                scores = jnp.einsum("bqhd,rhd->bhqr", q, split(pos_proj["c2p"](rel)))
                idx = np.clip(rpos + span, 0, 2 * span - 1)
                bias = bias + jnp.take_along_axis(scores, idx[None, None], axis=-1) / scale
            if "p2c" in cfg.pos_att_type:  # key j against the position query of bucket(j - i), transposed
                scores = jnp.einsum("bkhd,rhd->bhkr", k, split(pos_proj["p2c"](rel)))
                idx = np.clip(-rpos + span, 0, 2 * span - 1)
                bias = bias + jnp.swapaxes(jnp.take_along_axis(scores, idx[None, None], axis=-1),
                                           -1, -2) / scale
            bias = bias.astype(self.dtype)
        rate = cfg.attention_probs_dropout_prob
        if not self.deterministic and rate > 0:  # dropout needs the probabilities, which fused kernels never hold
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / scale + (0 if bias is None else bias)
            logits = jnp.where(key_mask(mask), logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
            w = nn.Dropout(rate)(jax.nn.softmax(logits, axis=-1).astype(self.dtype), deterministic=False)
            out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=key_mask(mask),
                                               scale=1.0 / scale)
        return out.reshape(out.shape[:2] + (cfg.hidden_size,))


class Residual(_Part):
    """dense -> dropout -> LayerNorm(x + residual): the reference's `SelfOutput` and `Output`."""

    @nn.compact
    def __call__(self, x, residual):
        x = _dense(self.config, self.config.hidden_size, self.dtype, "dense")(x)
        x = nn.Dropout(self.config.hidden_dropout_prob)(x, deterministic=self.deterministic)
        return _layer_norm(self.config, self.dtype)(x + residual)


class Layer(_Part):
    """One encoder layer under PyTorch's nesting; `(h, mask, rel) -> (h, None)` so that it can be scanned."""

    @nn.compact
    def __call__(self, h, mask, rel):
        cfg, dt, det = self.config, self.dtype, self.deterministic
        a = _Attention(cfg, dt, det, name="attention")(h, mask, rel)
        i = _Intermediate(cfg, dt, name="intermediate")(a)
        return Residual(cfg, dt, det, name="output")(i, a), None


class _Attention(_Part):
    @nn.compact
    def __call__(self, h, mask, rel):
        a = SelfAttention(self.config, self.dtype, self.deterministic, name="self")(h, mask, rel)
        return Residual(self.config, self.dtype, self.deterministic, name="output")(a, h)


class _Intermediate(_Part):
    @nn.compact
    def __call__(self, h):
        return ACTIVATIONS[self.config.hidden_act](_dense(self.config, self.config.intermediate_size, self.dtype,
                                                          "dense")(h))


class ConvLayer(_Part):
    """DeBERTa-v2's convolution beside the first layer (`conv_kernel_size`): LayerNorm(h + act(conv(embeddings)))."""

    @nn.compact
    def __call__(self, emb, h, mask):
        cfg, k = self.config, self.config.conv_kernel_size
        m = token_mask(mask)[..., None].astype(self.dtype)
        out = nn.Conv(cfg.hidden_size, (k,), padding=[((k - 1) // 2,) * 2], feature_group_count=cfg.conv_groups,
                      dtype=self.dtype, kernel_init=nn.initializers.normal(cfg.initializer_range), name="conv")(emb)
        out = nn.Dropout(cfg.hidden_dropout_prob)(out * m, deterministic=self.deterministic)
        return _layer_norm(cfg, self.dtype)(h + ACTIVATIONS[cfg.conv_act](out)) * m


class Layers(_Part):
    """`layer/0`, `layer/1`, ...: the per-layer tree, unrolled; `conv` (the encoder's) runs after layer 0."""

    remat: bool = False
    conv: nn.Module | None = None

    @nn.compact
    def __call__(self, h, mask, rel):
        block = nn.remat(Layer) if self.remat else Layer
        emb = h
        for i in range(self.config.num_hidden_layers):
            h, _ = block(self.config, self.dtype, self.deterministic, name=str(i))(h, mask, rel)
            if i == 0 and self.conv is not None:
                h = self.conv(emb, h, mask)
        return h


class Encoder(_Part):
    """The reference's `encoder`: relative-position table (+ LayerNorm), conv, and the layer stack, scanned (stacked
    params under `layer/`; with a conv, layer 0 apart as `first_layer`) or unrolled (`layer/0`, ...)."""

    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, h, mask):
        cfg, dt, det = self.config, self.dtype, self.deterministic
        rel = jnp.zeros((), dt)
        if cfg.relative_attention:
            rel = nn.Embed(2 * cfg.span, cfg.hidden_size, name="rel_embeddings",
                           embedding_init=nn.initializers.normal(cfg.initializer_range)).embedding.astype(dt)
            if cfg.norm_rel_ebd == "layer_norm":
                rel = _layer_norm(cfg, dt)(rel)
        conv = ConvLayer(cfg, dt, det, name="conv") if cfg.conv_kernel_size else None
        if not self.scan_layers:
            return Layers(cfg, dt, det, self.remat, conv, name="layer")(h, mask, rel)
        block = nn.remat(Layer, prevent_cse=False) if self.remat else Layer
        n = cfg.num_hidden_layers
        if conv is not None:
            h = conv(h, block(cfg, dt, det, name="first_layer")(h, mask, rel)[0], mask)
            n -= 1
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast, nn.broadcast), length=n)
        return scanned(cfg, dt, det, name="layer")(h, mask, rel)[0]


class Backbone(_Part):
    """The reference's `deberta`: embeddings + encoder."""

    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids):
        cfg, dt, det = self.config, self.dtype, self.deterministic
        h = Embeddings(cfg, dt, det, name="embeddings")(input_ids, mask, token_type_ids, position_ids)
        return Encoder(cfg, dt, det, self.scan_layers, self.remat, name="encoder")(h, mask)


class TokenClassifier(nn.Module):
    """`deberta` + dropout + linear classifier: logits [batch, seq, num_labels]."""

    config: DebertaV2Config
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids, deterministic: bool = True):
        cfg = self.config
        h = Backbone(cfg, self.dtype, deterministic, self.scan_layers, self.remat, name=PREFIX)(
            input_ids, mask, token_type_ids, position_ids)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        # lecun_normal, as the fresh classifier `loading.load_params` draws for a checkpoint without one
        return nn.Dense(cfg.num_labels, dtype=self.dtype, name="classifier")(h)
