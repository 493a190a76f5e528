"""The model families flaxner builds: a `Family` row each, keyed by config.json's `model_type`.
To add a family: a module under flaxner/models/ exposing its config class and model class (bert.py's interface),
a row in FAMILIES, and tests of its logits against transformers' PyTorch class on the same weights (test_bert.py)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What the rest of flaxner needs to know of one family; its module is imported only when a class is asked for.

    The config class: `from_dict(d, source)`, `to_dict()`, `replace(**kw)`, `model_type`, `labels`, `vocab_size`,
    `hidden_size`. The model class: `(config, dtype, scan_layers, remat)`, called with `params=`, `init_params`,
    `params_shape`, `save_pretrained`, `resized`."""

    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values this row serves
    module: str  # the module implementing it, e.g. flaxner.models.bert
    config: str  # names of its config class and model class in that module
    model: str
    prefix: str  # the backbone's key at the top of the parameter tree (beside `classifier`)
    embed_path: tuple[str, ...]  # the word-embedding table in the parameter tree (the compact vocabulary's)
    pytorch_architecture: str  # config.json `architectures` on export: the class transformers loads it into
    max_positions_field: str = "max_position_embeddings"

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def model_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.model)

    def max_positions(self, config) -> int:
        """The longest row (in tokens, specials included) that `config`'s position table allows."""
        return getattr(config, self.max_positions_field)


_BERT_TREE = ("embeddings", "word_embeddings", "embedding")
FAMILIES = (
    Family("bert", ("bert",), "flaxner.models.bert", "BertConfig", "FlaxBertForTokenClassification",
           "bert", ("bert", *_BERT_TREE), "BertForTokenClassification"),
    Family("roberta", ("roberta",), "flaxner.models.bert", "BertConfig", "FlaxBertForTokenClassification",
           "roberta", ("roberta", *_BERT_TREE), "RobertaForTokenClassification"),
    Family("xlm-roberta", ("xlm-roberta",), "flaxner.models.bert", "BertConfig", "FlaxBertForTokenClassification",
           "roberta", ("roberta", *_BERT_TREE), "XLMRobertaForTokenClassification"),
)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}
assert len(_BY_MODEL_TYPE) == sum(len(f.model_types) for f in FAMILIES), "a model_type served by two rows"


def supported_model_types() -> list[str]:
    return list(_BY_MODEL_TYPE)


def family_of(model_type: str, source: str = "config.json") -> Family:
    """The row serving `model_type`; else a one-line ValueError naming `source` and the model types flaxner has."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except (KeyError, TypeError):
        raise ValueError(f"{source}: model_type {model_type!r} is not supported; flaxner has: "
                         f"{', '.join(supported_model_types())}") from None

