"""Byte-level BPE tokenizers (RoBERTa's, ModernBERT's: `Ġ` marks a preceding space) made to tokenize words as
running text does.

flaxner tokenizes words one by one (training rows, the tagger's CoNLL-style words). A byte-level pre-tokenizer
without `add_prefix_space` then gives `lives` -> `l iv es` where the model learnt ` lives` -> `Ġlives`; with it, every
word is tokenized as it is after a space (the first word of a text too: transformers' documented setting for
RoBERTa with `is_split_into_words`). And `Ġ` tokens' character offsets cover the space unless a ByteLevel
post-processor trims them (ModernBERT's tokenizer.json has TemplateProcessing only): entity offsets would start
one character early. `for_words` sets both on the Rust tokenizer; the folder a run saves keeps them."""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)
_TRIM = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def _trims(post: dict | None) -> bool:
    """Whether a post-processor trims byte-level offsets (ByteLevel, RobertaProcessing, or a Sequence holding one)."""
    if not post:
        return False
    if post.get("type") == "Sequence":
        return any(_trims(p) for p in post.get("processors", []))
    return post.get("type") in ("ByteLevel", "RobertaProcessing") and bool(post.get("trim_offsets"))


def for_words(tokenizer):
    """`tokenizer` (a transformers fast tokenizer) with a plain ByteLevel pre-tokenizer set to add the prefix space
    and its offsets trimmed; other tokenizers are returned untouched. Modifies and returns `tokenizer`."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    state = json.loads(backend.to_str())
    pre, post = state.get("pre_tokenizer") or {}, state.get("post_processor")
    if pre.get("type") != "ByteLevel" or (pre.get("add_prefix_space") and _trims(post)):
        return tokenizer
    pre["add_prefix_space"] = True
    if not _trims(post):
        state["post_processor"] = {"type": "Sequence", "processors": [_TRIM, post]} if post else _TRIM
    rebuilt = Tokenizer.from_str(json.dumps(state))
    backend.pre_tokenizer, backend.post_processor = rebuilt.pre_tokenizer, rebuilt.post_processor
    log.info("byte-level tokenizer: words get the prefix space (Ġ) they have in running text; offsets trimmed")
    return tokenizer
