"""ModernBERT's config.json (transformers 4.48+ and 5 spellings) and PyTorch names; the model is
`flaxner.models.modernbert`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from flaxner.models.bert import ACTIVATIONS
from flaxner.models.registry import family_of

GLOBAL, LOCAL = "full_attention", "sliding_attention"


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """The fields of a ModernBERT config.json that the encoder uses, plus the label map."""

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int = 50283
    bos_token_id: int = 50281
    eos_token_id: int = 50282
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    attention_bias: bool = False
    attention_dropout: float = 0.0
    global_attn_every_n_layers: int = 3
    layer_types: tuple[str, ...] = ()  # explicit per-layer types; () = from global_attn_every_n_layers
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    local_attention: int = 128
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"  # sequence classification's; tokens are classified one by one
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    tie_word_embeddings: bool = True
    model_type: str = "modernbert"
    labels: tuple[str, ...] = ()

    def __post_init__(self):
        if self.layer_types and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> ModernBertConfig:
        """From a parsed config.json (transformers 4's `global_rope_theta`/`global_attn_every_n_layers` or 5's
        `rope_parameters`/`layer_types`); unknown keys are ignored, what this module cannot build is refused."""
        if family_of(d.get("model_type", ""), source).module != "flaxner.models.modernbert":
            raise ValueError(f"{source}: model_type {d.get('model_type')!r} is not ModernBERT's")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls)
              if f.name not in ("labels", "layer_types") and d.get(f.name) is not None}
        for key in ("hidden_activation", "classifier_activation"):
            if kw.get(key, "gelu") not in ACTIVATIONS:
                raise ValueError(f"{source}: {key} {kw[key]!r} is not supported ({sorted(ACTIVATIONS)})")
        for key in ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"):
            v = kw.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{source}: {key} {v!r} is not a probability in [0, 1)")
        rope = d.get("rope_parameters") or {}
        for typ, key in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
            params = rope.get(typ) or {}
            if params.get("rope_type", "default") != "default" or d.get("rope_scaling"):
                raise ValueError(f"{source}: rope scaling ({params.get('rope_type') or d.get('rope_scaling')!r}) "
                                 f"is not supported (default rotary positions only)")
            kw[key] = float(params.get("rope_theta", kw.get(key, getattr(cls, key))))
            if not kw[key] > 0:
                raise ValueError(f"{source}: {key} {kw[key]!r} is not positive")
        window, every = kw.get("local_attention", 128), kw.get("global_attn_every_n_layers", 3)
        for key, v in (("local_attention", window), ("global_attn_every_n_layers", every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{source}: {key} {v!r} is not a positive whole number")
        head_dim = kw.get("hidden_size", 768) // kw.get("num_attention_heads", 12)
        if head_dim % 2:
            raise ValueError(f"{source}: the head size {head_dim} is odd (rotary positions rotate pairs)")
        types = tuple(d.get("layer_types") or ())
        layers = kw.get("num_hidden_layers", 22)
        if types and (len(types) != layers or set(types) - {GLOBAL, LOCAL}):
            raise ValueError(f"{source}: layer_types must list {GLOBAL!r} or {LOCAL!r} for each of the {layers} "
                             f"layers, got {list(types)}")
        if types == _every(layers, every):
            types = ()  # the pattern of global_attn_every_n_layers: keep it derived (follows num_hidden_layers)
        id2label = d.get("id2label") or {}
        return cls(**kw, layer_types=types, labels=tuple(id2label[k] for k in sorted(id2label, key=int)))

    @classmethod
    def from_json_file(cls, path) -> ModernBertConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), str(path))

    @property
    def attention_types(self) -> tuple[str, ...]:
        return self.layer_types or _every(self.num_hidden_layers, self.global_attn_every_n_layers)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def replace(self, **kw) -> ModernBertConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """config.json that transformers' `ModernBertForTokenClassification.from_pretrained` reads (4.48+ and 5)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "labels"}
        d.update(architectures=[family_of(self.model_type).pytorch_architecture],
                 layer_types=list(self.attention_types),
                 rope_parameters={GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
                                  LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta}},
                 id2label={str(i): lab for i, lab in enumerate(self.labels)},
                 label2id={lab: i for i, lab in enumerate(self.labels)})
        return dict(sorted(d.items()))


def _every(layers: int, every: int) -> tuple[str, ...]:
    return tuple(LOCAL if i % every else GLOBAL for i in range(layers))


def from_pytorch_names(tensors: dict[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
    """PyTorch names/layouts -> this module's key paths: `*norm.weight` -> scale, `tok_embeddings.weight` ->
    embedding, 2-D Linear weights -> kernel transposed (the inverse is `weights.to_pytorch_names`)."""
    out = {}
    for name, value in tensors.items():
        *mod, leaf = name.split(".")
        if leaf == "weight" and mod and mod[-1].endswith("norm"):
            leaf = "scale"
        elif leaf == "weight" and mod and mod[-1] == "tok_embeddings":
            leaf = "embedding"
        elif leaf == "weight" and value.ndim == 2:
            value, leaf = value.T, "kernel"
        out[(*mod, leaf)] = value
    return out
