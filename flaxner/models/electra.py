"""ELECTRA for token classification, in Flax linen: BERT's embeddings at `embedding_size` wide, a linear
`embeddings_project` to `hidden_size` when the two differ (ELECTRA-small: 128 -> 256), then BERT's encoder
(flaxner.models.bert's modules, scanned and rematerialised alike).

The parameter tree is PyTorch's `ElectraForTokenClassification` in Flax spelling (`electra/embeddings/...`,
`electra/embeddings_project/kernel`, `electra/encoder/layer/0/...`, `classifier/...`), so the hub's
`ElectraForPreTraining` discriminators load (their `discriminator_predictions` head is left out) and the export
loads into PyTorch."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxner.models import bert


@dataclasses.dataclass(frozen=True)
class ElectraConfig(bert.BertConfig):
    """BERT's config.json fields plus `embedding_size` (the width of the embedding tables)."""

    # transformers' ElectraConfig defaults (ELECTRA-small's shape)
    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    model_type: str = "electra"


class Backbone(nn.Module):
    """PyTorch's `ElectraModel`: embeddings (+ projection) + encoder."""

    config: ElectraConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config
        # BERT's embedding block, with tables and LayerNorm `embedding_size` wide
        h = bert.Embeddings(cfg.replace(hidden_size=cfg.embedding_size), self.dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic)
        if cfg.embedding_size != cfg.hidden_size:
            h = bert._dense(cfg, cfg.hidden_size, self.dtype, "embeddings_project")(h)
        return bert.Encoder(cfg, self.dtype, deterministic, self.scan_layers, self.remat, name="encoder")(h, mask)


class TokenClassifier(nn.Module):
    """Backbone + dropout + linear classifier (PyTorch's `ElectraForTokenClassification`)."""

    config: ElectraConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, mask, token_type_ids, position_ids, deterministic: bool = True):
        cfg = self.config
        h = Backbone(cfg, self.dtype, self.scan_layers, self.remat, name="electra")(
            input_ids, mask, token_type_ids, position_ids, deterministic)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        h = nn.Dropout(rate, name="dropout")(h, deterministic=deterministic)
        return nn.Dense(cfg.num_labels, dtype=self.dtype, name="classifier")(h)


class FlaxElectraForTokenClassification(bert.FlaxBertForTokenClassification):
    """BERT's wrapper (inputs, positions 0..seq-1, scanned layers under `electra/encoder/layer`, export) around
    ELECTRA's module."""

    module_class = TokenClassifier
