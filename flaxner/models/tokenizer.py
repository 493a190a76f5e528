"""A model folder's tokenizer: the fast (Rust) tokenizer its files describe, loaded without transformers'
AutoTokenizer where tokenizer_config.json names the class (AutoTokenizer imports torch wherever torch is installed),
and adjusted for words tokenized one by one (`bytelevel.for_words`). Word ids and character offsets need the fast
tokenizer, so a folder without one is refused.

Tagging needs only the Rust tokenizer and three special ids of it (`TagTokenizer`); `load_tag_tokenizer` keeps
them in a cache file, so that a warm `flaxner tag` imports no transformers (about 0.7 s of a one-line start-up)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from flaxner.models import bytelevel
from flaxner.models.checks import ModelFileError

log = logging.getLogger(__name__)
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


# --- what tagging needs, cached ------------------------------------------------------------------------------

CACHE_FOLDER = "flaxner-tokenizers"  # under tag.compilation_cache; JAX's cache reads only its own *-cache files
CACHE_FORMAT = 1
WEIGHTS_SUFFIXES = (".safetensors", ".msgpack", ".bin", ".h5", ".ckpt", ".pt", ".pth", ".onnx")


@dataclass(frozen=True)
class TagTokenizer:
    """A folder's tokenizer as `load_tokenizer` builds it, reduced to what the Tagger reads: a private copy of the
    Rust tokenizer (`backend`, the fast tokenizer's `backend_tokenizer` after transformers' and `for_words`'
    adjustments), its special ids, and the largest id of its vocabulary (added tokens included)."""

    backend: object  # tokenizers.Tokenizer
    cls_token_id: int | None
    sep_token_id: int | None
    pad_token_id: int | None
    max_id: int

    @classmethod
    def of(cls, tok) -> TagTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(tok.backend_tokenizer.to_str()), tok.cls_token_id, tok.sep_token_id,
                   tok.pad_token_id, max(tok.get_vocab().values(), default=-1))

    def to_json(self) -> str:
        return json.dumps({"format": CACHE_FORMAT, "backend": self.backend.to_str(), "ids": [
            self.cls_token_id, self.sep_token_id, self.pad_token_id, self.max_id]})

    @classmethod
    def from_json(cls, text: str) -> TagTokenizer:
        from tokenizers import Tokenizer

        d = json.loads(text)
        ids = d["ids"]
        if d["format"] != CACHE_FORMAT or len(ids) != 4 or not all(i is None or type(i) is int for i in ids) \
                or type(ids[3]) is not int:
            raise ValueError("not a flaxner tokenizer cache entry of this format")
        return cls(Tokenizer.from_str(d["backend"]), *ids)


def cache_key(folder: Path) -> str | None:
    """What `load_tokenizer(folder)` depends on, hashed: every file of the folder but weights (names and bytes),
    the transformers and tokenizers that load it, and this module's and bytelevel's code. None (no caching) for a
    folder without tokenizer.json: its fast tokenizer is converted from other files, with more packages involved."""
    if not (folder / "tokenizer.json").is_file():
        return None
    import importlib.metadata
    import importlib.util

    import tokenizers

    spec = importlib.util.find_spec("transformers")
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, version, spec and spec.origin, tokenizers.__version__]).encode())
    try:
        for src in (__file__, bytelevel.__file__):
            h.update(Path(src).read_bytes())
        for p in sorted(folder.iterdir()):
            if not p.name.endswith(WEIGHTS_SUFFIXES) and p.is_file():
                h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    except OSError:  # an unreadable file: load_tokenizer says what is wrong, if anything is
        return None
    return h.hexdigest()


def load_tag_tokenizer(folder: Path, cache_dir: str = "") -> TagTokenizer:
    """`TagTokenizer.of(load_tokenizer(folder))`, read from `cache_dir` (tag.compilation_cache; "" = no cache) when
    an entry for the same files and versions is there, else built and stored there. A cache that cannot be read
    or written is passed over."""
    key = cache_key(folder) if cache_dir else None
    entry = Path(os.path.expanduser(cache_dir)) / CACHE_FOLDER / f"{key}.json" if key else None
    if entry is not None and entry.is_file():
        try:
            return TagTokenizer.from_json(entry.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - a damaged entry (any JSON or tokenizers error) is rebuilt
            log.debug("tokenizer cache %s passed over: %s", entry, e)
    tok = TagTokenizer.of(load_tokenizer(folder))
    if entry is not None:
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(tok.to_json(), encoding="utf-8")
            os.replace(tmp, entry)  # whole or absent, whoever else writes the same entry
        except OSError as e:
            log.debug("tokenizer cache %s not written: %s", entry, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return tok
