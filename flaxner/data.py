"""CoNLL-2003 (shipped copy, a folder of column files, or the hub) -> `datasets.Dataset` -> bucketed numpy batches."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaxner.config import DataConfig, TrainConfig
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


def fit_buckets(maxima: Sequence[int], count: int, multiple: int = 1) -> list[int]:
    """The `count` padded lengths (multiples of `multiple`) that waste the fewest tokens when each batch, given
    by its longest row, is padded to the smallest one that fits it: an exact dynamic programme over the
    distinct batch maxima."""
    maxima = -(-np.asarray(maxima, dtype=np.int64) // multiple) * multiple
    vals, counts = np.unique(maxima, return_counts=True)
    n = len(vals)
    if n <= count:
        return [int(v) for v in vals]
    rows = np.concatenate([[0], np.cumsum(counts)]).astype(np.float64)  # rows[i]: batches below vals[i]
    # best[i]: least padded length summed over the batches up to vals[i], vals[i] being the last bucket so far
    best = rows[1:] * vals
    later = np.triu(np.ones((n, n), dtype=bool), k=1)  # later[j, i]: j < i
    backs = []
    for _ in range(count - 1):
        # cand[j, i]: the best up to vals[j], then one bucket vals[i] for the batches in (vals[j], vals[i]]
        cand = np.where(later, best[:, None] + (rows[None, 1:] - rows[1:, None]) * vals[None, :], np.inf)
        backs.append(np.argmin(cand, axis=0))
        best = cand[backs[-1], np.arange(n)]
    i, out = n - 1, [int(vals[-1])]
    for back in reversed(backs):
        i = int(back[i])
        out.append(int(vals[i]))
    return sorted(out)


def run_buckets(data: DataConfig, train: TrainConfig, lengths: np.ndarray, multiple: int = 1) -> tuple[int, ...]:
    """The padded lengths a run uses: `data.buckets`, or with `data.fit_buckets` = k, the k lengths fitted to
    the batches of all its epochs (a pure function of the data and the seed, so a resumed run gets the same),
    followed by the configured buckets above them for longer evaluation rows."""
    if not data.fit_buckets:
        return tuple(data.buckets)
    maxima = [int(lengths[idx].max()) for epoch in range(train.epochs)
              for idx in batch_order(lengths, train.batch_size, train.seed, epoch, train.batching)]
    fitted = fit_buckets(maxima, data.fit_buckets, multiple)
    return tuple(fitted + [b for b in data.buckets if b > fitted[-1]])


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, mode: str = "grouped",
                shuffle: bool = True) -> list[np.ndarray]:
    """Row indices of every batch of one epoch, a pure function of (seed, epoch). "grouped" sorts random
    mega-batches of 50 batches by length, as the HF Trainer's `group_by_length`, then shuffles the batch order;
    "random" is a plain permutation; shuffle=False sorts by length for evaluation."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    if mode == "random":
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    mega = batch_size * 50
    batches = []
    for m in range(0, n, mega):
        chunk = perm[m:m + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    # The one short batch (if any) stays last, so every other step has the full batch.
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    order = rng.permutation(len(full))
    return [full[i] for i in order] + short


def collate(enc: Encoded, idx: np.ndarray, batch_size: int, buckets: Sequence[int],
            pad_id: int = 0) -> dict[str, np.ndarray]:
    """Pad rows `idx` to a fixed [batch_size, bucket] shape; missing rows are all-padding with IGNORE labels."""
    seq = bucket_for(max(len(enc.input_ids[i]) for i in idx), buckets)
    input_ids = np.full((batch_size, seq), pad_id, dtype=np.int32)
    labels = np.full((batch_size, seq), IGNORE, dtype=np.int32)
    mask = np.zeros((batch_size, seq), dtype=np.int32)
    for r, i in enumerate(idx):
        n = len(enc.input_ids[i])
        input_ids[r, :n] = enc.input_ids[i]
        labels[r, :n] = enc.labels[i]
        mask[r, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def iter_batches(enc: Encoded, batch_size: int, buckets: Sequence[int], seed: int = 0, epoch: int = 0,
                 mode: str = "grouped", shuffle: bool = True, start: int = 0,
                 pad_id: int = 0) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (row indices, padded batch) for one epoch, from batch number `start` on."""
    for idx in batch_order(enc.lengths, batch_size, seed, epoch, mode, shuffle)[start:]:
        yield idx, collate(enc, idx, batch_size, buckets, pad_id)


def padding_stats(enc: Encoded, batch_size: int, buckets: Sequence[int], seed: int = 0,
                  mode: str = "grouped") -> dict[str, float]:
    """Real and padded token counts of one epoch's batches, and the shapes they compile."""
    lengths = enc.lengths
    real = padded = 0
    shapes = set()
    for idx in batch_order(lengths, batch_size, seed, 0, mode):
        seq = bucket_for(int(lengths[idx].max()), buckets)
        shapes.add(seq)
        real += int(lengths[idx].sum())
        padded += batch_size * seq
    return {"real_tokens": real, "padded_tokens": padded, "padding": 1 - real / padded, "shapes": sorted(shapes)}
