"""DeBERTa-v2 / v3 (config.json `model_type: deberta-v2`) for token classification, in Flax linen.

The layers are in deberta_layers.py. The parameter tree is PyTorch's `DebertaV2ForTokenClassification` names as a Flax tree (`deberta/encoder/layer/0/
attention/self/query_proj/kernel`, `deberta/encoder/rel_embeddings/embedding`, `classifier/...`), so the hub's
safetensors/bin load through the generic name mapping and `save_pretrained` writes a folder transformers loads.

Disentangled attention: the content-to-position (c2p) and position-to-content (p2c) scores are gathered from the
shared relative-position table and handed to `jax.nn.dot_product_attention` as an additive `bias`, with the content
score's scale `1/sqrt(head_dim * scale_factor)` as its `scale`. That is the reference's sum of the three terms before
one softmax, so the result is exact (float rounding aside); the relative-position indices depend only on the
(static) row length and are numpy constants of the trace.

Positions: v3 has no absolute position table (`position_biased_input: false`); its relative buckets saturate at
`max_relative_positions` (512), so longer rows would run but see every distance past it as one. The registry's
`max_positions` is therefore `max_position_embeddings` (512 for v3, what it was pretrained on), not a larger number."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flaxner.models.deberta_layers import ACTIVATIONS, PREFIX, TokenClassifier
from flaxner.models.masks import model_mask, plain_positions
from flaxner.models.registry import family_of
from flaxner.models.weights import from_pytorch_names as generic_from_pytorch_names
from flaxner.models.weights import stack_layers, to_pytorch_names

POS_ATT_TYPES = ("c2p", "p2c")


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
    """The fields of a DeBERTa-v2 config.json the encoder uses (transformers' defaults), plus the label map."""

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    pad_token_id: int = 0
    relative_attention: bool = False
    max_relative_positions: int = -1  # < 1: max_position_embeddings (resolved by from_dict)
    position_buckets: int = -1
    position_biased_input: bool = True
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    embedding_size: int | None = None  # None: hidden_size
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    model_type: str = "deberta-v2"
    labels: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> DebertaV2Config:
        """From a parsed config.json; unknown keys are ignored, what this module does not compute is refused."""
        family = family_of(d.get("model_type"), source)
        if family.module != __name__:
            raise ValueError(f"{source}: model_type {d.get('model_type')!r} is built by {family.module}")
        names = {f.name for f in dataclasses.fields(cls)} - {"labels", "pos_att_type", "norm_rel_ebd"}
        kw = {k: d[k] for k in names if d.get(k) is not None}
        pat = d.get("pos_att_type") or ()
        pat = tuple(x.strip() for x in (pat.lower().split("|") if isinstance(pat, str) else pat))
        norm = tuple(x.strip() for x in str(d.get("norm_rel_ebd") or "none").lower().split("|"))
        head = d.get("hidden_size", cls.hidden_size) // d.get("num_attention_heads", cls.num_attention_heads)
        refused = {"pos_att_type": (set(pat) - set(POS_ATT_TYPES), "c2p, p2c"),
                   "norm_rel_ebd": (set(norm) - {"none", "layer_norm"}, "none, layer_norm"),
                   "hidden_act": ({kw.get("hidden_act", "gelu")} - set(ACTIVATIONS), ", ".join(ACTIVATIONS)),
                   "conv_act": ({kw.get("conv_act", "tanh")} - set(ACTIVATIONS), ", ".join(ACTIVATIONS)),
                   "attention_head_size": ({d.get("attention_head_size", head)} - {head}, "hidden_size / heads"),
                   "conv_kernel_size": ({kw.get("conv_kernel_size", 0)} - {0, *range(1, 64, 2)}, "0 or odd, < 64")}
        for key, (bad, allowed) in refused.items():
            if bad:
                raise ValueError(f"{source}: {key} {d.get(key)!r} is not supported by flaxner's DeBERTa ({allowed})")
        if kw.get("embedding_size") == kw.get("hidden_size", cls.hidden_size):
            del kw["embedding_size"]  # None: follows hidden_size (a random-weights bench may replace it)
        if kw.get("max_relative_positions", -1) < 1:
            kw["max_relative_positions"] = kw.get("max_position_embeddings", cls.max_position_embeddings)
        id2label = d.get("id2label") or {}
        labels = tuple(id2label[k] for k in sorted(id2label, key=int))
        return cls(**kw, pos_att_type=pat, norm_rel_ebd="layer_norm" if "layer_norm" in norm else "none",
                   labels=labels)

    @property
    def prefix(self) -> str:
        return PREFIX

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def span(self) -> int:
        """Relative distances per side of the table (`pos_ebd_size` in the reference): 2 * span rows."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    def replace(self, **kw) -> DebertaV2Config:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """config.json that transformers' `DebertaV2ForTokenClassification.from_pretrained` reads."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "labels"}
        d.update(architectures=[family_of(self.model_type).pytorch_architecture], pos_att_type=list(self.pos_att_type),
                 id2label={str(i): lab for i, lab in enumerate(self.labels)},
                 label2id={lab: i for i, lab in enumerate(self.labels)})
        if d["embedding_size"] is None:  # transformers reads a missing key as hidden_size, a null one as null
            del d["embedding_size"]
        return dict(sorted(d.items()))


@struct.dataclass
class TokenClassifierOutput:
    logits: jax.Array  # [batch, seq, num_labels]


def from_pytorch_names(tensors: dict[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
    """The generic mapping (`weights.from_pytorch_names`) plus the conv's [out, in/groups, k] weight -> Flax's
    [k, in/groups, out] kernel (`weights.to_pytorch_names` already reverses it with `.T`)."""
    out = generic_from_pytorch_names(tensors)
    for key in [k for k in out if k[-2:] == ("conv", "weight") and out[k].ndim == 3]:
        out[(*key[:-1], "kernel")] = out.pop(key).T
    return out


class FlaxDebertaV2ForTokenClassification:
    """The model other modules use: `model(input_ids, attention_mask, params=..., dropout_rng=..., train=...)`
    returns `.logits`; `params` is always the per-layer tree with PyTorch's names."""

    @property
    def packs_rows(self) -> bool:
        """Segments may share a row (`masks`) unless a convolution mixes neighbouring tokens."""
        return not self.config.conv_kernel_size

    def __init__(self, config: DebertaV2Config, dtype=jnp.float32, scan_layers: bool = False, remat: bool = False):
        self.config, self.dtype = config, dtype
        self.scan_layers, self.remat = scan_layers, remat
        self.module = TokenClassifier(config, dtype, scan_layers, remat)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, params=None,
                 dropout_rng=None, train: bool = False, segment_ids=None) -> TokenClassifierOutput:
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = model_mask(input_ids, attention_mask, segment_ids)
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        if position_ids is None:
            position_ids = plain_positions(input_ids, segment_ids)
        if self.scan_layers:
            params = self._scanned(params)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        logits = self.module.apply({"params": params}, input_ids, mask, token_type_ids, position_ids,
                                   deterministic=not train, rngs=rngs)
        return TokenClassifierOutput(logits=logits)

    def _scanned(self, params: dict) -> dict:
        """The per-layer tree as the scanned module holds it (with a conv, layer 0 apart as `first_layer`)."""
        if self.config.conv_kernel_size:
            enc = dict(params[PREFIX]["encoder"])
            layers = enc.pop("layer")
            enc.update(first_layer=layers["0"], layer={str(i - 1): layers[str(i)] for i in range(1, len(layers))})
            params = {**params, PREFIX: {**params[PREFIX], "encoder": enc}}
        return stack_layers(params, PREFIX)

    def _init(self, rng):
        ids = jnp.zeros((1, 1), jnp.int32)
        unrolled = TokenClassifier(self.config, self.dtype, scan_layers=False)
        return unrolled.init(rng, ids, jnp.ones_like(ids), ids, ids, deterministic=True)["params"]

    def init_params(self, seed: int = 0) -> dict:
        """Fresh weights: normal(initializer_range) kernels and tables, zero biases, unit LayerNorm."""
        return jax.jit(self._init)(jax.random.PRNGKey(seed))

    def params_shape(self) -> dict:
        """The params tree as `jax.ShapeDtypeStruct`s (no memory)."""
        return jax.eval_shape(lambda: self._init(jax.random.PRNGKey(0)))  # the key traced, not compiled

    def save_pretrained(self, out, params: dict) -> None:
        """An HF folder (no tokenizer): config.json and model.safetensors (PyTorch names), float32."""
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        host = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_file(to_pytorch_names(host), str(out / "model.safetensors"), metadata={"format": "pt"})

    def resized(self, vocab_size: int) -> FlaxDebertaV2ForTokenClassification:
        """The same model with a word-embedding table of `vocab_size` rows (no weights)."""
        return type(self)(self.config.replace(vocab_size=vocab_size), self.dtype, self.scan_layers, self.remat)
