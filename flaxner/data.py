"""CoNLL-2003 (shipped copy, a folder of column files, or the hub) -> `datasets.Dataset` -> bucketed numpy batches."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaxner.config import DataConfig
from flaxner.labels import CONLL_LABELS, IGNORE, align_labels, b_to_i, label2id

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "resources" / "conll2003"
# Split names as the hub spells them, and the file stems CoNLL folders use for them.
SPLIT_FILES = {"train": ("train",), "validation": ("valid", "validation", "dev", "testa"), "test": ("test", "testb")}
SUFFIXES = (".txt", ".txt.gz", ".conll", ".iob2", "")


class DataError(ValueError):
    """A data file or split that cannot be used, with the file:line and the reason."""


def find_split_file(folder: Path, split: str) -> Path:
    """The file of `split` in a CoNLL folder (train.txt, valid.txt, test.txt, optionally gzipped)."""
    for stem in SPLIT_FILES.get(split, (split,)):
        for suf in SUFFIXES:
            p = folder / f"{stem}{suf}"
            if p.is_file():
                return p
    raise DataError(f"{folder}: no file for split {split!r} (looked for {'/'.join(SPLIT_FILES.get(split, (split,)))}"
                    f" with {', '.join(s or 'no suffix' for s in SUFFIXES)})")


def read_conll(path: str | Path, labels: Sequence[str] = CONLL_LABELS) -> dict[str, list]:
    """Read a CoNLL column file (word ... tag per line, blank line between sentences, -DOCSTART- skipped) into
    columns id/tokens/ner_tags. A malformed line or an unknown tag raises DataError naming file:line."""
    path = Path(path)
    ids = label2id(labels)
    opener = gzip.open if path.suffix == ".gz" else open
    tokens_col: list[list[str]] = []
    tags_col: list[list[int]] = []
    words: list[str] = []
    tags: list[int] = []

    def flush() -> None:
        if words:
            tokens_col.append(list(words))
            tags_col.append(list(tags))
            words.clear()
            tags.clear()

    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            cols = line.split()
            if cols[0] == "-DOCSTART-":
                flush()
                continue
            if len(cols) < 2:
                raise DataError(f"{path}:{lineno}: expected 'word ... tag' columns, got {line!r}")
            tag = cols[-1]
            if tag not in ids:
                raise DataError(f"{path}:{lineno}: tag {tag!r} is not in the label set {list(labels)}")
            words.append(cols[0])
            tags.append(ids[tag])
    flush()
    return {"id": [str(i) for i in range(len(tokens_col))], "tokens": tokens_col, "ner_tags": tags_col}


def load_split(cfg: DataConfig, split: str, labels: Sequence[str] = CONLL_LABELS):
    """One split as a `datasets.Dataset` with the hub's conll2003 columns (id, tokens, ner_tags as ClassLabel)."""
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(labels))),
    })
    source = cfg.source
    folder = BUILTIN_DIR if source == "builtin" else Path(source).expanduser()
    if folder.is_dir():
        ds = datasets.Dataset.from_dict(read_conll(find_split_file(folder, split), labels), features=features)
    elif source.count("/") <= 1 and not source.startswith((".", "/", "~")):
        ds = _load_hub(source, split, labels)
    else:
        raise DataError(f"data.source {source!r}: no such folder (and not a hub dataset name)")
    if cfg.limit:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    return ds


def _load_hub(name: str, split: str, labels: Sequence[str]):
    import datasets

    try:
        dd = datasets.load_dataset(name)
    except Exception as e:  # the hub is unreachable offline; say so with the way out
        raise DataError(f"could not load hub dataset {name!r} ({type(e).__name__}: {e}); offline, use "
                        f"data.source=builtin or a folder of CoNLL files") from e
    if split not in dd:
        raise DataError(f"hub dataset {name!r} has no split {split!r} (it has {list(dd)})")
    ds = dd[split]
    names = ds.features["ner_tags"].feature.names
    if list(names) != list(labels):
        raise DataError(f"hub dataset {name!r} labels {names} differ from {list(labels)}")
    return ds.select_columns(["id", "tokens", "ner_tags"])


@dataclass
class Encoded:
    """A tokenized split: one int32 array of sub-token ids and one of aligned labels per (piece of a) sentence."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    # Per row and sub-token: the index of the word it starts in its sentence, -1 for later pieces and specials.
    word_index: list[np.ndarray]
    # Index of the source sentence of each row (long sentences are split into several rows).
    source: np.ndarray
    # Words per source sentence.
    n_words: np.ndarray
    n_split: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(ds, tokenizer, cfg: DataConfig, labels: Sequence[str] = CONLL_LABELS) -> Encoded:
    """Tokenize word lists (a Dataset or a dict of columns `tokens`, `ner_tags`), align labels to first sub-tokens, and split (never cut) sentences longer than
    `max_length` sub-tokens into consecutive pieces of whole words."""
    cols = ds if isinstance(ds, dict) else ds[:]  # plain lists (datasets 5 gives lazy Columns for ds[name])
    tokens_col, tags_col = cols["tokens"], cols["ner_tags"]
    enc = tokenizer(tokens_col, is_split_into_words=True, add_special_tokens=False, truncation=False)
    bmap = b_to_i(labels)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    budget = cfg.max_length - 2
    ids_out, lab_out, words_out, src = [], [], [], []
    n_split = 0
    for i in range(len(tokens_col)):
        ids = enc["input_ids"][i]
        word_ids = enc.word_ids(i)
        aligned = align_labels(word_ids, tags_col[i], cfg.label_all_tokens, bmap)
        starts = [w if w is not None and (k == 0 or word_ids[k - 1] != w) else -1 for k, w in enumerate(word_ids)]
        pieces = _split_at_words(word_ids, budget)
        n_split += len(pieces) > 1
        for a, b in pieces:
            ids_out.append(np.array([cls, *ids[a:b], sep], dtype=np.int32))
            lab_out.append(np.array([IGNORE, *aligned[a:b], IGNORE], dtype=np.int32))
            words_out.append(np.array([-1, *starts[a:b], -1], dtype=np.int32))
            src.append(i)
    if n_split:
        log.info("split %d sentences longer than %d sub-tokens into pieces at word boundaries", n_split, cfg.max_length)
    n_words = np.array([len(t) for t in tokens_col], dtype=np.int64)
    return Encoded(ids_out, lab_out, words_out, np.array(src, dtype=np.int64), n_words, n_split)


def _split_at_words(word_ids: Sequence[int | None], budget: int) -> list[tuple[int, int]]:
    """Sub-token ranges of at most `budget` that start at word starts (a single over-long word is cut)."""
    n = len(word_ids)
    if n <= budget:
        return [(0, n)]
    pieces, start = [], 0
    while start < n:
        end = min(start + budget, n)
        if end < n:
            cut = end
            while cut > start and word_ids[cut] == word_ids[cut - 1]:
                cut -= 1
            end = cut if cut > start else end
        pieces.append((start, end))
        start = end
    return pieces


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket length that holds `length` tokens."""
    for b in buckets:
        if length <= b:
            return b
    raise DataError(f"a sequence of {length} sub-tokens exceeds the largest bucket {buckets[-1]}")


def load_dataset_splits(cfg: DataConfig, splits: Sequence[str], optional: Sequence[str] = (),
                        labels: Sequence[str] | None = None) -> tuple[dict, tuple[str, ...]]:
    """{split name: Dataset (id, tokens, ner_tags as label ids)} for `splits` and those of `optional` that the
    source has, and the label inventory (`labels` as given, e.g. from a checkpoint; else CoNLL-2003's)."""
    labels = tuple(labels or CONLL_LABELS)
    out = {s: load_split(cfg, s, labels) for s in splits}
    for s in optional:
        if s not in out and _has_split(cfg, s):
            out[s] = load_split(cfg, s, labels)
    return out, labels


def _has_split(cfg: DataConfig, split: str) -> bool:
    folder = BUILTIN_DIR if cfg.source == "builtin" else Path(cfg.source).expanduser()
    if not folder.is_dir():
        return True  # a hub dataset: `load_split` says which splits it has
    try:
        find_split_file(folder, split)
    except DataError:
        return False
    return True
