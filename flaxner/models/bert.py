"""flaxner's own BERT (and RoBERTa / XLM-R) for token classification, in Flax linen.

The parameter tree is transformers' `FlaxBertForTokenClassification` tree (`bert/encoder/layer/0/...`; `roberta/...`
for RoBERTa), so `flax_model.msgpack` files and orbax checkpoints written with the HF class load unchanged. The
layers may run as one `nn.scan`ned block (`model.scan_layers`): XLA then compiles one layer instead of
`num_hidden_layers`; its stacked parameters exist only inside the traced call (`weights.stack_layers`), so everything
outside (optimizer state, checkpoints, exports, the compact vocabulary) sees the per-layer HF tree.

Why linen rather than nnx: the rest of flaxner treats the model as a pure function of a parameter pytree (optax
state, orbax checkpoints, the compact-vocabulary table swap, `jax.jit` with shardings); linen's `apply(params, ...)`
is exactly that, while nnx's stateful objects would have to be split and merged at each of those seams."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.linen.attention import dot_product_attention_weights

from flaxner.models.masks import key_mask, model_mask, position_ids_for
from flaxner.models.registry import family_of
from flaxner.models.weights import stack_layers, to_pytorch_names

_TANH_GELU = functools.partial(jax.nn.gelu, approximate=True)
ACTIVATIONS = {"gelu": functools.partial(jax.nn.gelu, approximate=False),  # BERT's reference GELU (erf)
               "gelu_new": _TANH_GELU, "gelu_pytorch_tanh": _TANH_GELU, "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of an HF `config.json` that the encoder uses, plus the label map (hashable, so it can be a
    linen attribute)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    model_type: str = "bert"
    labels: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> BertConfig:
        """From a parsed config.json; unknown keys are ignored, unsupported architectures refused."""
        model_type = d.get("model_type", "bert")
        family = family_of(model_type, source)
        if family.config_class() is not cls:
            raise ValueError(f"{source}: model_type {model_type!r} is built by {family.module}, not {cls.__name__}")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: position_embedding_type {d['position_embedding_type']!r} is not supported "
                             f"(absolute only)")
        if d.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act {d['hidden_act']!r} is not supported ({sorted(ACTIVATIONS)})")
        names = {f.name for f in dataclasses.fields(cls)} - {"labels"}
        kw = {k: d[k] for k in names if k in d and (d[k] is not None or k == "classifier_dropout")}
        id2label = d.get("id2label") or {}
        labels = tuple(id2label[k] for k in sorted(id2label, key=int))
        return cls(**kw, labels=labels)

    @classmethod
    def from_json_file(cls, path) -> BertConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), str(path))

    @property
    def prefix(self) -> str:
        return family_of(self.model_type).prefix

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}

    def replace(self, **kw) -> BertConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """config.json that transformers' PyTorch `...ForTokenClassification.from_pretrained` reads."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "labels"}
        d.update(architectures=[family_of(self.model_type).pytorch_architecture], position_embedding_type="absolute",
                 id2label={str(i): lab for i, lab in self.id2label.items()}, label2id=self.label2id)
        if self.model_type in ("roberta", "xlm-roberta"):
            d.update(bos_token_id=0, eos_token_id=2)
        return dict(sorted(d.items()))


def _dense(cfg: BertConfig, features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)


def _layer_norm(cfg: BertConfig, dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name="LayerNorm")


class Embeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        embed = functools.partial(nn.Embed, features=cfg.hidden_size, embedding_init=init, dtype=self.dtype)
        h = (embed(cfg.vocab_size, name="word_embeddings")(input_ids)
             + embed(cfg.type_vocab_size, name="token_type_embeddings")(token_type_ids)
             + embed(cfg.max_position_embeddings, name="position_embeddings")(position_ids))
        h = _layer_norm(cfg, self.dtype)(h)
        return nn.Dropout(cfg.hidden_dropout_prob, name="dropout")(h, deterministic=deterministic)


class SelfAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask):
        """h [batch, seq, hidden], mask [batch, seq] (1 = token) or packed (`masks`) -> [batch, seq, hidden]."""
        cfg = self.config
        heads = cfg.num_attention_heads
        split = lambda x: x.reshape(x.shape[:2] + (heads, cfg.hidden_size // heads))  # noqa: E731
        q, k, v = (split(_dense(cfg, cfg.hidden_size, self.dtype, n)(h)) for n in ("query", "key", "value"))
        rate = cfg.attention_probs_dropout_prob
        if not self.deterministic and rate > 0:
            # Dropout on the attention probabilities (BERT's reference) needs the probabilities themselves, which
            # the fused kernels never materialise.
            bias = jnp.where(key_mask(mask), 0.0, jnp.finfo(self.dtype).min).astype(self.dtype)
            w = dot_product_attention_weights(q, k, bias=bias, dropout_rng=self.make_rng("dropout"),
                                              dropout_rate=rate, broadcast_dropout=True, deterministic=False,
                                              dtype=self.dtype)
            out = jnp.einsum("...hqk,...khd->...qhd", w, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=key_mask(mask), implementation=None)
        return out.reshape(out.shape[:2] + (cfg.hidden_size,))


class Residual(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's `SelfOutput` and `Output`."""

    config: BertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, residual):
        cfg = self.config
        x = _dense(cfg, cfg.hidden_size, self.dtype, "dense")(x)
        x = nn.Dropout(cfg.hidden_dropout_prob, name="dropout")(x, deterministic=self.deterministic)
        return _layer_norm(cfg, self.dtype)(x + residual)


class Attention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask):
        a = SelfAttention(self.config, self.dtype, self.deterministic, name="self")(h, mask)
        return Residual(self.config, self.dtype, self.deterministic, name="output")(a, h)


class Intermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        h = _dense(self.config, self.config.intermediate_size, self.dtype, "dense")(h)
        return ACTIVATIONS[self.config.hidden_act](h)


class Layer(nn.Module):
    """One encoder layer; `(h, mask) -> (h, None)` so that it can be scanned."""

    config: BertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, mask):
        a = Attention(self.config, self.dtype, self.deterministic, name="attention")(h, mask)
        i = Intermediate(self.config, self.dtype, name="intermediate")(a)
        return Residual(self.config, self.dtype, self.deterministic, name="output")(i, a), None


class Layers(nn.Module):
    """`layer/0`, `layer/1`, ...: the per-layer tree of `block`s (BERT's `Layer` or a family's own), unrolled."""

    config: BertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True
    remat: bool = False
    block: Any = Layer

    @nn.compact
    def __call__(self, h, mask):
        cls = nn.remat(self.block) if self.remat else self.block
        for i in range(self.config.num_hidden_layers):
            h, _ = cls(self.config, self.dtype, self.deterministic, name=str(i))(h, mask)
        return h


class Encoder(nn.Module):
    """HF's `encoder` (DistilBERT's `transformer`): `block`s scanned (stacked under `layer/`) or unrolled."""

    config: BertConfig
    dtype: Any = jnp.float32
    deterministic: bool = True
    scan_layers: bool = False
    remat: bool = False
    block: Any = Layer

    @nn.compact
    def __call__(self, h, mask):
        cfg = self.config
        if not self.scan_layers:
            return Layers(cfg, self.dtype, self.deterministic, self.remat, self.block, name="layer")(h, mask)
        block = nn.remat(self.block, prevent_cse=False) if self.remat else self.block
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=nn.broadcast, length=cfg.num_hidden_layers)
        h, _ = scanned(cfg, self.dtype, self.deterministic, name="layer")(h, mask)
        return h


class Backbone(nn.Module):
    """HF's `bert` / `roberta` module without the pooler: embeddings + encoder."""

    config: BertConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids, deterministic: bool):
        h = Embeddings(self.config, self.dtype, name="embeddings")(input_ids, token_type_ids, position_ids,
                                                                    deterministic)
        return Encoder(self.config, self.dtype, deterministic, self.scan_layers, self.remat, name="encoder")(h, mask)


class TokenClassifier(nn.Module):
    """Backbone + dropout + linear classifier: logits [batch, seq, num_labels]."""

    config: BertConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids, deterministic: bool = True):
        cfg = self.config
        h = Backbone(cfg, self.dtype, self.scan_layers, self.remat, name=cfg.prefix)(
            input_ids, mask, token_type_ids, position_ids, deterministic)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        h = nn.Dropout(rate, name="dropout")(h, deterministic=deterministic)
        # lecun_normal, as transformers' Flax class (whose recipe flaxner's results were measured with) draws it
        return nn.Dense(cfg.num_labels, dtype=self.dtype, name="classifier")(h)


@struct.dataclass
class TokenClassifierOutput:
    logits: jax.Array  # [batch, seq, num_labels]


class FlaxBertForTokenClassification:
    """The model other modules use: `model(input_ids, attention_mask, params=..., dropout_rng=..., train=...)`
    returns `.logits`; `params` is always the per-layer HF tree. A family with BERT's inputs names its module."""
    module_class = TokenClassifier
    packs_rows = True  # segments may share a row (`masks`): nothing mixes tokens outside attention

    def __init__(self, config: BertConfig, dtype=jnp.float32, scan_layers: bool = False, remat: bool = False):
        self.config, self.dtype = config, dtype
        self.scan_layers, self.remat = scan_layers, remat
        self.module = self.module_class(config, dtype, scan_layers, remat)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, params=None,
                 dropout_rng=None, train: bool = False, segment_ids=None) -> TokenClassifierOutput:
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = model_mask(input_ids, attention_mask, segment_ids)
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        if position_ids is None:
            position_ids = position_ids_for(input_ids, self.config, segment_ids)
        if self.scan_layers:
            params = stack_layers(params, self.config.prefix)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        logits = self.module.apply({"params": params}, input_ids, mask, token_type_ids, position_ids,
                                   deterministic=not train, rngs=rngs)
        return TokenClassifierOutput(logits=logits)

    def init_params(self, seed: int = 0) -> dict:
        """Fresh weights as BERT initialises them (normal(initializer_range), zero biases, unit LayerNorm)."""
        unrolled = self.module_class(self.config, self.dtype, scan_layers=False)
        ids = jnp.zeros((1, 1), jnp.int32)
        def init_weights(rng):
            return unrolled.init(rng, ids, ids, ids, ids, deterministic=True)["params"]

        return jax.jit(init_weights)(jax.random.PRNGKey(seed))

    def params_shape(self) -> dict:
        """The params tree as `jax.ShapeDtypeStruct`s (no memory)."""
        unrolled = self.module_class(self.config, self.dtype, scan_layers=False)
        ids = np.zeros((1, 1), np.int32)  # numpy: jnp.zeros would compile a program outside the trace
        return jax.eval_shape(lambda: unrolled.init(jax.random.PRNGKey(0), ids, ids, ids, ids)["params"])

    def save_pretrained(self, out, params: dict) -> None:
        """An HF folder (no tokenizer): config.json, model.safetensors (PyTorch names), flax_model.msgpack (HF
        Flax tree), all float32."""
        from pathlib import Path

        from flax.serialization import msgpack_serialize
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        host = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_file(to_pytorch_names(host), str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "flax_model.msgpack").write_bytes(msgpack_serialize(host))

    def resized(self, vocab_size: int) -> FlaxBertForTokenClassification:
        """The same model with a word-embedding table of `vocab_size` rows (no weights)."""
        return type(self)(self.config.replace(vocab_size=vocab_size), self.dtype, self.scan_layers, self.remat)
