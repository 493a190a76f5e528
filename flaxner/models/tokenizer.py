"""A model folder's tokenizer: the fast (Rust) tokenizer its files describe, loaded without transformers'
AutoTokenizer where tokenizer_config.json names the class (AutoTokenizer imports torch wherever torch is installed),
and adjusted for words tokenized one by one (`bytelevel.for_words`). Word ids and character offsets need the fast
tokenizer, so a folder without one is refused."""

from __future__ import annotations

import json
from pathlib import Path

from flaxner.models import bytelevel
from flaxner.models.checks import ModelFileError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "vocab.json",
                   "spm.model")


def _named_tokenizer_class(folder: Path):
    """The fast tokenizer class tokenizer_config.json names (`BertTokenizer` -> transformers' BertTokenizerFast in
    4.x, BertTokenizer in 5.x), taken from transformers' top level; None where it names none or no tokenizer
    class. Loading through it skips AutoTokenizer, whose config module imports torch wherever torch is installed
    (seconds of start-up for nothing: docs/install.md)."""
    import transformers
    from transformers import PreTrainedTokenizerBase

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name.isidentifier() or not name.endswith(("Tokenizer", "TokenizerFast")):
        return None
    for candidate in (name if name.endswith("Fast") else name + "Fast", name):
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
            return cls
    return None


def load_tokenizer(folder: Path):
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFileError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); copy them from the "
                             f"base model's folder or set model.tokenizer")
    if (folder / "spm.model").is_file() and not (folder / "tokenizer.json").is_file():
        try:  # DeBERTa-v3's hub folders: transformers builds the fast tokenizer from spm.model with sentencepiece
            import sentencepiece  # noqa: F401
        except ImportError:
            raise ModelFileError(f"{folder}: spm.model without tokenizer.json needs sentencepiece to build the fast "
                                 f"tokenizer: pip install 'flaxner[deberta]'") from None
    named = _named_tokenizer_class(folder)
    tok = named.from_pretrained(str(folder)) if named else None
    if tok is None or not tok.is_fast:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if not tok.is_fast:
        raise ModelFileError(f"{folder}: a fast tokenizer (tokenizer.json) is needed for word ids and character "
                             f"offsets")
    return bytelevel.for_words(tok)
