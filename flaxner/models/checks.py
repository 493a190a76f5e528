"""What a model folder must satisfy before anything is built or traced: a config.json within sane sizes, and a
tokenizer whose ids fit the embedding table."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model folder or weights file that cannot be used; the message names the file and what is wrong."""


# Sane bounds on a config.json's sizes, checked before anything is traced: a file naming a million layers or a
# 10**12-row vocabulary would otherwise trace for minutes or fail deep inside XLA.
BOUNDS = {"vocab_size": (1, 1 << 22), "hidden_size": (1, 1 << 14), "num_hidden_layers": (1, 256),
          "num_attention_heads": (1, 1 << 10), "intermediate_size": (1, 1 << 17),
          "max_position_embeddings": (1, 1 << 17), "type_vocab_size": (0, 1 << 10),  # 0: none (DeBERTa-v3)
          "embedding_size": (1, 1 << 14),
          "position_buckets": (-1, 1 << 17), "max_relative_positions": (-1, 1 << 17)}  # DeBERTa; -1: unset
# DistilBERT's config.json names the same sizes otherwise
BOUNDS.update(dim=BOUNDS["hidden_size"], n_layers=BOUNDS["num_hidden_layers"], n_heads=BOUNDS["num_attention_heads"],
              hidden_dim=BOUNDS["intermediate_size"])
DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def check_bounds(kw: dict, source: str) -> None:
    """Refuse a config.json size outside `BOUNDS` (or heads that do not divide the hidden size), naming the key."""
    for key, (lo, hi) in BOUNDS.items():
        v = kw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
            raise ModelFileError(f"{source}: {key} {v!r} is not a whole number in [{lo}, {hi}]")
    for key in DROPOUTS:
        v = kw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            raise ModelFileError(f"{source}: {key} {v!r} is not a probability in [0, 1)")
    for hidden_key, heads_key in (("hidden_size", "num_attention_heads"), ("dim", "n_heads")):
        hidden, heads = kw.get(hidden_key, 768), kw.get(heads_key, 12)
        if hidden % heads:
            raise ModelFileError(f"{source}: {heads_key} {heads} does not divide {hidden_key} {hidden}")


def check_tokenizer_fits(tokenizer, vocab_size: int, where) -> None:
    """Refuse a tokenizer with ids past the embedding table: the model would read rows that do not exist (JAX
    clamps the index, so every such token would silently read the last row)."""
    check_ids_fit(max(tokenizer.get_vocab().values(), default=-1), vocab_size, where)


def check_ids_fit(top: int, vocab_size: int, where) -> None:
    """`check_tokenizer_fits` given the tokenizer's largest id (`TagTokenizer.max_id`)."""
    if top >= vocab_size:
        raise ModelFileError(f"{where}: the tokenizer has ids up to {top}, past the model's vocab_size {vocab_size} "
                             f"(config.json): a tokenizer of another model?")
