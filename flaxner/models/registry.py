"""The model families flaxner builds: a `Family` row each, keyed by config.json's `model_type`.
To add a family: a module under flaxner/models/ exposing its config class and model class (bert.py's interface),
a row in FAMILIES, and tests of its logits against transformers' PyTorch class on the same weights (test_bert.py)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What the rest of flaxner needs to know of one family; its module is imported only when a class is asked for.

    The config class: `from_dict(d, source)`, `to_dict()`, `replace(**kw)`, `model_type`, `labels`, `vocab_size`
    and HF's shape fields (`hidden_size`, `num_hidden_layers`, ...). The model class: `(config, dtype, scan_layers,
    remat)`, called with `params=`, `init_params`, `params_shape`, `save_pretrained`, `resized`."""

    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values this row serves
    module: str  # the module implementing it, e.g. flaxner.models.bert
    config: str  # names of its config class and model class in that module
    model: str
    prefix: str  # the backbone's key at the top of the parameter tree (beside `classifier`)
    embed_path: tuple[str, ...]  # the word-embedding table in the parameter tree (the compact vocabulary's)
    pytorch_architecture: str  # config.json `architectures` on export: the class transformers loads it into
    max_positions_field: str = "max_position_embeddings"
    # Top-level names of a bare encoder's checkpoint (BertModel's `embeddings.`, `encoder.`, ...): they load under
    # `prefix` (a token-classification checkpoint names them `prefix.embeddings....`).
    bare_keys: tuple[str, ...] = ("embeddings", "encoder", "pooler")
    # RoBERTa / XLM-R number positions from pad_token_id + 1 (masks.position_ids_for): a table of N rows then holds
    # N - pad_token_id - 1 tokens (514 -> 512).
    positions_after_pad: bool = False

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def model_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.model)

    def from_pytorch_names(self, tensors: dict) -> dict:
        """PyTorch names/layouts -> this family's Flax key paths: its module's `from_pytorch_names` if it has one,
        else the generic mapping of `flaxner.models.weights` (Linear -> kernel transposed, LayerNorm -> scale)."""
        from flaxner.models import weights

        own = getattr(importlib.import_module(self.module), "from_pytorch_names", None)
        return (own or weights.from_pytorch_names)(tensors)

    def max_positions(self, config) -> int:
        """The longest row (in tokens, specials included) that `config`'s position table allows."""
        n = getattr(config, self.max_positions_field)
        return n - config.pad_token_id - 1 if self.positions_after_pad else n


_BERT = dict(module="flaxner.models.bert", config="BertConfig", model="FlaxBertForTokenClassification")
_WORDS = ("embeddings", "word_embeddings", "embedding")  # below the prefix, in the HF Flax BERT tree
FAMILIES = (
    Family(name="bert", model_types=("bert",), **_BERT, prefix="bert", embed_path=("bert", *_WORDS),
           pytorch_architecture="BertForTokenClassification"),
    Family(name="roberta", model_types=("roberta",), **_BERT, prefix="roberta", embed_path=("roberta", *_WORDS),
           pytorch_architecture="RobertaForTokenClassification", positions_after_pad=True),
    Family(name="xlm-roberta", model_types=("xlm-roberta",), **_BERT, prefix="roberta",
           embed_path=("roberta", *_WORDS), pytorch_architecture="XLMRobertaForTokenClassification",
           positions_after_pad=True),
    Family(name="distilbert", model_types=("distilbert",), module="flaxner.models.distilbert",
           config="DistilBertConfig", model="FlaxDistilBertForTokenClassification", prefix="distilbert",
           embed_path=("distilbert", *_WORDS), pytorch_architecture="DistilBertForTokenClassification",
           bare_keys=("embeddings", "transformer")),
    Family(name="electra", model_types=("electra",), module="flaxner.models.electra", config="ElectraConfig",
           model="FlaxElectraForTokenClassification", prefix="electra", embed_path=("electra", *_WORDS),
           pytorch_architecture="ElectraForTokenClassification",
           bare_keys=("embeddings", "embeddings_project", "encoder")),
    Family(name="modernbert", model_types=("modernbert",), module="flaxner.models.modernbert",
           config="ModernBertConfig", model="FlaxModernBertForTokenClassification", prefix="model",
           embed_path=("model", "embeddings", "tok_embeddings", "embedding"),
           pytorch_architecture="ModernBertForTokenClassification", bare_keys=("embeddings", "layers", "final_norm")),
    # DeBERTa-v2/v3 and mDeBERTa: max_position_embeddings is v3's pretraining length (it has no absolute table;
    # flaxner/models/deberta.py says why rows stay within it).
    Family(name="deberta-v2", model_types=("deberta-v2",), module="flaxner.models.deberta",
           config="DebertaV2Config", model="FlaxDebertaV2ForTokenClassification", prefix="deberta",
           embed_path=("deberta", *_WORDS), pytorch_architecture="DebertaV2ForTokenClassification",
           bare_keys=("embeddings", "encoder")),
)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def supported_model_types() -> list[str]:
    return list(_BY_MODEL_TYPE)


def family_of(model_type: str, source: str = "config.json") -> Family:
    """The row serving `model_type`; else a one-line ValueError naming `source` and the model types flaxner has."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except (KeyError, TypeError):
        raise ValueError(f"{source}: model_type {model_type!r} is not supported; flaxner has: "
                         f"{', '.join(supported_model_types())}") from None

