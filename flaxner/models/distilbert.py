"""DistilBERT for token classification, in Flax linen.

Its own parameter tree, PyTorch's `DistilBertForTokenClassification` in Flax spelling: `distilbert/embeddings/`
(word and position tables, no token types), `distilbert/transformer/layer/N/` with `attention/{q,k,v,out}_lin`,
`sa_layer_norm`, `ffn/lin1`, `ffn/lin2`, `output_layer_norm`, then `classifier`. Post-LayerNorm blocks as BERT's,
but no dropout after the attention's output projection. The config keeps config.json's names (`dim`, `n_layers`,
`n_heads`, `hidden_dim`) and answers BERT's (`hidden_size`, ...) as transformers' `attribute_map` does."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.attention import dot_product_attention_weights

from flaxner.models import bert
from flaxner.models.masks import key_mask, model_mask, plain_positions
from flaxner.models.registry import family_of
from flaxner.models.weights import from_pytorch_names as bert_names
from flaxner.models.weights import stack_layers

LAYERS = ("transformer", "layer")  # the layer stack below the prefix
# BERT's names of the shape fields -> DistilBERT's config.json names (transformers' DistilBertConfig.attribute_map,
# plus the feed-forward width)
ALIASES = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
           "intermediate_size": "hidden_dim"}
LAYER_NORM_EPS = 1e-12  # fixed in transformers' DistilBERT


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """The fields of a DistilBERT config.json the encoder uses, plus the label map."""

    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    initializer_range: float = 0.02
    pad_token_id: int = 0
    model_type: str = "distilbert"
    labels: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> DistilBertConfig:
        """From a parsed config.json (BERT's names accepted for the shape, as transformers does)."""
        family = family_of(d.get("model_type", "distilbert"), source)
        if family.config_class() is not cls:
            raise ValueError(f"{source}: model_type {d.get('model_type')!r} is built by {family.module}, "
                             f"not {cls.__name__}")
        if d.get("activation", "gelu") not in bert.ACTIVATIONS:
            raise ValueError(f"{source}: activation {d['activation']!r} is not supported "
                             f"({sorted(bert.ACTIVATIONS)})")
        d = {**{native: d[alias] for alias, native in ALIASES.items() if alias in d and native not in d}, **d}
        names = {f.name for f in dataclasses.fields(cls)} - {"labels"}
        kw = {k: d[k] for k in names if d.get(k) is not None}
        id2label = d.get("id2label") or {}
        return cls(**kw, labels=tuple(id2label[k] for k in sorted(id2label, key=int)))

    @classmethod
    def from_json_file(cls, path) -> DistilBertConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), str(path))

    hidden_size = property(lambda self: self.dim)
    num_hidden_layers = property(lambda self: self.n_layers)
    num_attention_heads = property(lambda self: self.n_heads)
    intermediate_size = property(lambda self: self.hidden_dim)
    prefix = property(lambda self: family_of(self.model_type).prefix)
    num_labels = property(lambda self: len(self.labels))
    id2label = property(lambda self: dict(enumerate(self.labels)))
    label2id = property(lambda self: {lab: i for i, lab in enumerate(self.labels)})

    def replace(self, **kw) -> DistilBertConfig:
        """`dataclasses.replace`, taking BERT's names of the shape fields too (`hidden_size=` sets `dim`)."""
        return dataclasses.replace(self, **{ALIASES.get(k, k): v for k, v in kw.items()})

    def to_dict(self) -> dict:
        """config.json that transformers' `DistilBertForTokenClassification.from_pretrained` reads."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "labels"}
        d.update(architectures=[family_of(self.model_type).pytorch_architecture],
                 id2label={str(i): lab for i, lab in enumerate(self.labels)},
                 label2id={lab: i for i, lab in enumerate(self.labels)})
        return dict(sorted(d.items()))


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """transformers' `create_sinusoidal_embeddings`: sin on even columns, cos on odd ones."""
    angle = np.arange(n_pos)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None, :]
    return np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


def _dense(cfg: DistilBertConfig, features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


class Embeddings(nn.Module):
    config: DistilBertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, position_ids, deterministic: bool):
        cfg = self.config
        normal = nn.initializers.normal(cfg.initializer_range)
        pos_init = ((lambda key, shape, dtype: jnp.asarray(sinusoidal_table(*shape), dtype))
                    if cfg.sinusoidal_pos_embds else normal)
        h = (nn.Embed(cfg.vocab_size, cfg.dim, embedding_init=normal, dtype=self.dtype, name="word_embeddings")(
                input_ids)
             + nn.Embed(cfg.max_position_embeddings, cfg.dim, embedding_init=pos_init, dtype=self.dtype,
                        name="position_embeddings")(position_ids))
        h = _layer_norm(self.dtype, "LayerNorm")(h)
        return nn.Dropout(cfg.dropout, name="dropout")(h, deterministic=deterministic)


class MultiHeadSelfAttention(nn.Module):
    config: DistilBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask):
        """h [batch, seq, dim], mask [batch, seq] (1 = token) -> [batch, seq, dim]."""
        cfg = self.config
        split = lambda x: x.reshape(x.shape[:2] + (cfg.n_heads, cfg.dim // cfg.n_heads))  # noqa: E731
        q, k, v = (split(_dense(cfg, cfg.dim, self.dtype, n)(h)) for n in ("q_lin", "k_lin", "v_lin"))
        if not self.deterministic and cfg.attention_dropout > 0:
            # dropout on the probabilities, which the fused kernels never materialise (as bert.SelfAttention)
            bias = jnp.where(key_mask(mask), 0.0, jnp.finfo(self.dtype).min).astype(self.dtype)
            w = dot_product_attention_weights(q, k, bias=bias, dropout_rng=self.make_rng("dropout"),
                                              dropout_rate=cfg.attention_dropout, broadcast_dropout=True,
                                              deterministic=False, dtype=self.dtype)
            out = jnp.einsum("...hqk,...khd->...qhd", w, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=key_mask(mask), implementation=None)
        return _dense(cfg, cfg.dim, self.dtype, "out_lin")(out.reshape(out.shape[:2] + (cfg.dim,)))


class FFN(nn.Module):
    config: DistilBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        h = bert.ACTIVATIONS[cfg.activation](_dense(cfg, cfg.hidden_dim, self.dtype, "lin1")(h))
        h = _dense(cfg, cfg.dim, self.dtype, "lin2")(h)
        return nn.Dropout(cfg.dropout, name="dropout")(h, deterministic=self.deterministic)


class TransformerBlock(nn.Module):
    """One layer; `(h, mask) -> (h, None)` so that it can be scanned."""

    config: DistilBertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask):
        a = MultiHeadSelfAttention(self.config, self.dtype, self.deterministic, name="attention")(h, mask)
        a = _layer_norm(self.dtype, "sa_layer_norm")(a + h)
        f = FFN(self.config, self.dtype, self.deterministic, name="ffn")(a)
        return _layer_norm(self.dtype, "output_layer_norm")(f + a), None


class TokenClassifier(nn.Module):
    """`distilbert` (embeddings + transformer) + dropout + linear classifier: logits [batch, seq, num_labels].
    Called as BERT's module (`token_type_ids` accepted and unused), so bert's wrapper builds and saves it."""

    config: DistilBertConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids, deterministic: bool = True):
        cfg = self.config
        h = DistilBertModel(cfg, self.dtype, self.scan_layers, self.remat, name="distilbert")(
            input_ids, mask, position_ids, deterministic)
        h = nn.Dropout(cfg.dropout, name="dropout")(h, deterministic=deterministic)
        return nn.Dense(cfg.num_labels, dtype=self.dtype, name="classifier")(h)


class DistilBertModel(nn.Module):
    config: DistilBertConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, position_ids, deterministic: bool):
        h = Embeddings(self.config, self.dtype, name="embeddings")(input_ids, position_ids, deterministic)
        return bert.Encoder(self.config, self.dtype, deterministic, self.scan_layers, self.remat, TransformerBlock,
                            name="transformer")(h, mask)


class FlaxDistilBertForTokenClassification(bert.FlaxBertForTokenClassification):
    """`model(input_ids, attention_mask, params=..., dropout_rng=..., train=...)` returns `.logits`; `params` is
    the per-layer tree. Building, saving and resizing are BERT's wrapper's."""

    module_class = TokenClassifier

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, params=None,
                 dropout_rng=None, train: bool = False, segment_ids=None) -> bert.TokenClassifierOutput:
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = model_mask(input_ids, attention_mask, segment_ids)
        if position_ids is None:
            position_ids = plain_positions(input_ids, segment_ids)
        if self.scan_layers:
            params = stack_layers(params, self.config.prefix, LAYERS)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        logits = self.module.apply({"params": params}, input_ids, mask, None, position_ids,
                                   deterministic=not train, rngs=rngs)
        return bert.TokenClassifierOutput(logits=logits)


def from_pytorch_names(tensors: dict[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
    """BERT's mapping (`flaxner.models.weights.from_pytorch_names`), plus DistilBERT's LayerNorms named
    `*_layer_norm` (their `weight` is Flax's `scale`)."""
    return {((*k[:-1], "scale") if k[-1] == "weight" and len(k) > 1 and k[-2].endswith("layer_norm") else k): v
            for k, v in bert_names(tensors).items()}

