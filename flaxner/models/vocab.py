"""Compact vocabulary: train only the embedding rows of token ids that occur in the run's data.

With no weight decay this is exactly dense Adam: a row no batch ever touches has a zero gradient at every step,
so its Adam moments stay zero and its update is 0 / (sqrt(0) + eps) = 0, and it adds nothing to the global norm
used for clipping. What it saves is the optimizer's pass over the rest of the table (92M of mBERT's 178M
parameters) and the dense scatter of the embedding gradient, every step."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from flaxner.data.splits import Encoded
from flaxner.models.registry import FAMILIES, supported_model_types

log = logging.getLogger(__name__)


def embed_path(params: Mapping) -> tuple[str, ...]:
    """The word-embedding table's path in `params`: the first family row whose `embed_path` the tree holds (a tree
    carries no model_type; families that share a path, RoBERTa and XLM-R, share the table)."""
    for family in FAMILIES:
        node = params
        for k in family.embed_path:
            node = node.get(k) if isinstance(node, Mapping) else None
        if node is not None:
            return family.embed_path
    raise ValueError(f"no word-embedding table of any of flaxner's families ({', '.join(supported_model_types())}) "
                     f"in a parameter tree with top keys {sorted(params)}")


def _get(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> dict:
    """A shallow-copied tree with `value` at `path` (the input is not modified)."""
    out = dict(tree)
    out[path[0]] = value if len(path) == 1 else _set(tree[path[0]], path[1:], value)
    return out


@dataclass(frozen=True)
class CompactVocab:
    """Sorted token ids kept (`ids`) and the map from a full-vocabulary id to its compact row (`remap`)."""

    ids: np.ndarray
    remap: np.ndarray

    @classmethod
    def from_encoded(cls, encs: Iterable[Encoded], vocab_size: int, extra: Iterable[int] = ()) -> CompactVocab:
        """The ids that occur in any of `encs`, plus `extra` (special tokens)."""
        seen = np.zeros(vocab_size, dtype=bool)
        for enc in encs:
            if enc.input_ids:
                seen[np.concatenate(enc.input_ids)] = True
        seen[[i for i in extra if i is not None]] = True
        ids = np.flatnonzero(seen).astype(np.int32)
        remap = np.full(vocab_size, -1, dtype=np.int32)
        remap[ids] = np.arange(len(ids), dtype=np.int32)
        return cls(ids, remap)

    def encode(self, enc: Encoded) -> Encoded:
        """The same rows with ids replaced by compact rows."""
        return replace(enc, input_ids=[self.remap[x] for x in enc.input_ids])

    def shrink(self, params: dict) -> dict:
        """Params whose word-embedding table holds only the kept rows."""
        path = embed_path(params)
        return _set(params, path, np.asarray(_get(params, path))[self.ids])

    def model(self, model):
        """A twin of `model` whose word-embedding table has the compact row count (no weights)."""
        return model.resized(len(self.ids))

    def expand(self, params: dict, full_params: dict) -> dict:
        """Compact params put back into the full vocabulary: trained rows over the untouched original table."""
        path = embed_path(params)
        table = np.array(_get(full_params, path), copy=True)
        table[self.ids] = np.asarray(_get(params, path))
        return _set(params, path, table)


def compact_model(tc, model, params: dict, encs: Iterable[Encoded], special_ids: Iterable[int]):
    """(model to train, its params, CompactVocab) when `train.compact_vocab` applies (no weight decay), else
    (model, params, None). Encodings must then go through `vocab.encode` before batching."""
    if not tc.compact_vocab or tc.weight_decay:
        return model, params, None
    vocab = CompactVocab.from_encoded(encs, model.config.vocab_size, special_ids)
    log.info("compact vocabulary: %d of %d embedding rows occur in the data", len(vocab.ids),
             model.config.vocab_size)
    return vocab.model(model), vocab.shrink(params), vocab
