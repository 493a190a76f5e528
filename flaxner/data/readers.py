"""Readers of every data format into one shape: sentences of words with their string tags, each with the
file:line it came from (for errors), before scheme conversion and the label inventory (in `flaxner.data.splits`)."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flaxner.config import DataConfig
from flaxner.data import annotations
from flaxner.data.annotations import SHAPES, AnnotationError
from flaxner.data.words import split_words

log = logging.getLogger(__name__)

# Keys of the JSON Lines span forms: Label Studio/generic `entities`, Doccano `label`, `spans`, spaCy `ents`.
SPAN_KEYS = ("entities", "spans", "label", "ents")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
# Examples of spans off word boundaries reported per file.
SHOW_EXAMPLES = 3


class DataError(ValueError):
    """A data file or split that cannot be used, with the file:line and the reason."""


@dataclass
class Sentences:
    """Sentences read from one file or dataset: words, tags (strings, or ints to be named by `data.labels`), and
    for each sentence the file and line of its first word (CoNLL: word k is on line + k; JSONL: all on line)."""

    source: str
    tokens: list[list[str]] = field(default_factory=list)
    tags: list[list] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    per_word_lines: bool = False
    # The document of each sentence (CoNLL: counted at each -DOCSTART-); empty: the reader knows none.
    documents: list[int] = field(default_factory=list)
    unit: str = ""  # what `lines` count where they are no lines: "task " (a JSON array's), "doc " (a DocBin's)

    def where(self, i: int, k: int = 0) -> str:
        """file:line of word k of sentence i."""
        return f"{self.source}:{self.unit}{self.lines[i] + (k if self.per_word_lines else 0)}"


def text_lines(path: Path, encoding: str, max_line_bytes: int = 0) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, optionally gzipped; bytes that are not `encoding` raise DataError
    naming the line and the `data.encoding` way out, and so does a line over `max_line_bytes` (0: no cap), read no
    further than the cap so that its memory stays bounded."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(max_line_bytes + 1) if max_line_bytes else f.readline()
            if not raw:
                return
            lineno += 1
            if max_line_bytes and len(raw.rstrip(b"\r\n")) > max_line_bytes:
                raise DataError(f"{path}:{lineno}: the line is over data.max_line_bytes={max_line_bytes} bytes; "
                                f"split the record or raise the cap")
            try:
                yield lineno, raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid {encoding} text ({e.reason} at byte {e.start} of the "
                                f"line); set data.encoding (e.g. data.encoding=latin-1)") from None


def read_conll(path: str | Path, cfg: DataConfig = DataConfig()) -> Sentences:
    """A CoNLL column file: one word per line (columns split by tabs if the line has one, else by spaces),
    blank lines between sentences, a -DOCSTART- line starts a document (`Sentences.documents`); the word is column `data.token_column`, the tag
    `data.tag_column`, and `data.token_prefix` is stripped from words that carry it."""
    path = Path(path)
    out = Sentences(str(path), per_word_lines=True)
    words: list[str] = []
    tags: list[str] = []
    start = 0
    need = max(cfg.token_column, cfg.tag_column) + 1 if cfg.tag_column >= 0 else max(cfg.token_column + 1, 2)
    prefix = cfg.token_prefix
    doc, marked = 0, False

    def flush() -> None:
        if words:
            out.tokens.append(list(words))
            out.tags.append(list(tags))
            out.lines.append(start)
            out.documents.append(doc)
            words.clear()
            tags.clear()

    for lineno, line in text_lines(path, cfg.encoding, cfg.max_line_bytes):
        if not line.strip():
            flush()
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if cols[0].strip() == "-DOCSTART-":
            flush()
            doc += bool(out.tokens)  # the first document's marker opens the file
            marked = True
            continue
        if len(cols) < need:
            raise DataError(f"{path}:{lineno}: expected at least {need} columns (word in column "
                            f"{cfg.token_column}, tag in column {cfg.tag_column}), got {line!r}")
        word, tag = cols[cfg.token_column].strip(), cols[cfg.tag_column].strip()
        if not word or not tag:
            raise DataError(f"{path}:{lineno}: empty word or tag column in {line!r}")
        if prefix and word.startswith(prefix) and len(word) > len(prefix):
            word = word[len(prefix):]
        if not words:
            start = lineno
        words.append(word)
        tags.append(tag)
    flush()
    if not marked:
        out.documents = []  # no -DOCSTART- line: the file says nothing of documents
    return out


@dataclass
class OffWords:
    """Spans of one file that did not fall on word boundaries: the words were split at the span's edges."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    empty: int = 0  # empty spans [a, a), dropped


def read_jsonl(path: str | Path, cfg: DataConfig = DataConfig()) -> Sentences:
    """JSON Lines (or a JSON array: Label Studio's exports), one sentence per record: words and tags
    (`data.tokens_column`, `data.tags_column`; tags as strings or as ids into `data.labels`), or raw text with
    character spans in any form `annotations.SHAPES` lists (`data.format`, else each record's own keys say which).
    Span texts are split into words with `flaxner.data.words.split_words`; a span that does not fall on word
    boundaries splits the word at its edge, and is counted and reported (never shifted); overlapping spans are an
    error naming the line."""
    path = Path(path)
    out = Sentences(str(path), unit="task " if annotations.is_json_array(path) else "")
    off = OffWords()
    docs: list = []
    skipped: Counter = Counter()
    seen: Counter = Counter()  # JSON-MIN: one record per annotation, so a task id comes back once per annotation
    records = annotations.json_records(path, cfg, text_lines(path, cfg.encoding, cfg.max_line_bytes))
    try:
        for where, lineno, rec in records:
            fmt = annotations.detect(rec) if cfg.format in ("auto", "jsonl", "doccano") else cfg.format
            if fmt == "label-studio-min" and "id" in rec:
                seen[json.dumps(rec["id"])] += 1
                if seen[json.dumps(rec["id"])] != max(cfg.annotation, 0) + 1:
                    skipped["label-studio-min record of a task already read (another annotation)"] += 1
                    continue
            got = _record(rec, fmt, cfg, where, off, skipped)
            if got is None:
                continue
            words, tags = got
            if words:
                out.tokens.append(words)
                out.tags.append(tags)
                out.lines.append(lineno)
                # a spans record is a document of its own; a words record names its document or is one
                doc = rec.get(cfg.document_column) if cfg.tokens_column in rec else None
                docs.append(("line", lineno) if doc is None else ("id", json.dumps(doc, sort_keys=True)))
    except AnnotationError as e:
        raise DataError(str(e)) from None
    out.documents = _number_documents(docs)
    for why, n in skipped.items():
        log.warning("%s: %d records skipped: %s", path, n, why)
    if off.empty:
        log.warning("%s: %d empty entity spans ([a, a): no characters) were dropped", path, off.empty)
    if off.count:
        log.warning("%s: %d entity spans did not fall on word boundaries; their words were split at the span "
                    "edges, e.g. %s", path, off.count, "; ".join(off.examples))
    return out


def _record(rec: dict, fmt: str, cfg: DataConfig, where: str, off: OffWords,
            skipped: Counter) -> tuple[list[str], list] | None:
    """The words and tags of one record read as `fmt`; None: a record the tool's export marks as not to use."""
    if fmt == "label-studio":
        got = annotations.label_studio(rec, where, cfg.annotation, skipped)
    elif fmt == "label-studio-min":
        got = annotations.label_studio_min(rec, where)
    elif fmt == "prodigy":
        got = annotations.prodigy(rec, where, skipped)
    elif cfg.tokens_column in rec:
        return _words_record(rec, cfg, where)
    elif isinstance(rec.get("text"), str) or "text" in rec:
        if not isinstance(rec["text"], str):
            raise DataError(f"{where}: 'text' must be a string")
        got = rec["text"], _span_list(rec, where)
    else:
        raise DataError(f"{where}: expected {cfg.tokens_column!r} and {cfg.tags_column!r} (words and tags) or "
                        f"'text' with one of {list(SPAN_KEYS)} (character spans); got keys {sorted(rec)}; the "
                        f"annotation tools' shapes: {'; '.join(f'{k}: {v}' for k, v in SHAPES.items())}")
    return None if got is None else _spans_record(got[0], sorted(got[1]), where, off)


def _words_record(rec: dict, cfg: DataConfig, where: str) -> tuple[list[str], list]:
    words, tags = rec[cfg.tokens_column], rec.get(cfg.tags_column)
    if tags is None:
        raise DataError(f"{where}: {cfg.tokens_column!r} without {cfg.tags_column!r} (set data.tags_column)")
    if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
        raise DataError(f"{where}: {cfg.tokens_column!r} and {cfg.tags_column!r} must be lists of one length")
    if not all(isinstance(w, str) and w.strip() for w in words):
        raise DataError(f"{where}: every word must be a non-empty string")
    if not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags):
        raise DataError(f"{where}: every tag must be a string or an integer label id")
    return [w.strip() for w in words], tags


def _span_list(rec: dict, where: str) -> list[tuple[int, int, str]]:
    key = next((k for k in SPAN_KEYS if k in rec), None)
    raw = rec.get(key) or []
    if not isinstance(raw, list):
        raise DataError(f"{where}: {key!r} must be a list of spans")
    spans = []
    for s in raw:
        if isinstance(s, dict):
            s = (s.get("start", s.get("start_offset")), s.get("end", s.get("end_offset")), s.get("label"))
        if (not isinstance(s, (list, tuple)) or len(s) != 3 or not isinstance(s[2], str)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in s[:2])):  # true is not 1
            raise DataError(f"{where}: a span must be {{start, end, label}} or [start, end, label], got {s!r}")
        spans.append((s[0], s[1], s[2]))
    return sorted(spans)


def _spans_record(text: str, spans: list[tuple[int, int, str]], where: str,
                  off: OffWords) -> tuple[list[str], list[str]]:
    empty = [sp for sp in spans if sp[0] == sp[1] and 0 <= sp[0] <= len(text)]
    if empty:  # an empty span labels no character (annotation tools leave them): counted, then dropped
        off.empty += len(empty)
        spans = [sp for sp in spans if sp not in empty]
    for (a, b, lab), nxt in zip(spans, spans[1:] + [None], strict=False):  # no spans: the None is left over
        if not 0 <= a < b <= len(text):
            raise DataError(f"{where}: span [{a}, {b}) {lab!r} is outside the text of {len(text)} characters")
        if nxt is not None and nxt[0] < b:
            raise DataError(f"{where}: spans [{a}, {b}) {lab!r} and [{nxt[0]}, {nxt[1]}) {nxt[2]!r} overlap "
                            f"(nested entities cannot be written as one tag per word)")
    words = split_words(text)
    # Cut the words at every span edge that falls inside a word, so each span covers whole words.
    edges = sorted({x for a, b, _ in spans for x in (a, b)})
    cut: list[tuple[int, int]] = []
    for wa, wb in words:
        inner = [x for x in edges if wa < x < wb]
        pts = [wa, *inner, wb]
        cut.extend(itertools.pairwise(pts))
    for a, b, lab in spans:
        if any(wa < a < wb or wa < b < wb for wa, wb in words):
            off.count += 1
            if len(off.examples) < SHOW_EXAMPLES:
                off.examples.append(f"{where}: {text[a:b]!r} ({lab}) in {text[max(0, a - 15):b + 15]!r}")
    tags = ["O"] * len(cut)
    k = 0
    for a, b, lab in spans:
        inside = [i for i in range(k, len(cut)) if a <= cut[i][0] and cut[i][1] <= b]
        if not inside:
            raise DataError(f"{where}: span [{a}, {b}) {lab!r} covers no word ({text[a:b]!r})")
        tags[inside[0]] = f"B-{lab}"
        for i in inside[1:]:
            tags[i] = f"I-{lab}"
        k = inside[-1] + 1
    return [text[x:y] for x, y in cut], tags


def read_file(path: str | Path, cfg: DataConfig = DataConfig()) -> Sentences:
    """A data file in `data.format`, or by its name: a spaCy DocBin for .spacy, JSON Lines or a JSON array for
    .jsonl/.json(.gz) (each record's keys say which tool's shape), else CoNLL columns."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such data file")
    fmt = cfg.format
    if fmt == "auto":
        fmt = "spacy" if p.suffix == ".spacy" else "jsonl" if p.name.endswith(JSONL_SUFFIXES) else "conll"
    if fmt == "spacy":
        return annotations.read_docbin(p, cfg)
    return read_conll(p, cfg) if fmt == "conll" else read_jsonl(p, cfg)


def read_hf(ds, cfg: DataConfig, name: str, split: str) -> tuple[Sentences, list[str] | None]:
    """A `datasets.Dataset` with word and tag columns (`data.tokens_column`, `data.tags_column`): its
    sentences, and the tag column's ClassLabel names when it has them."""
    for col in (cfg.tokens_column, cfg.tags_column):
        if col not in ds.column_names:
            raise DataError(f"dataset {name!r} split {split!r} has no column {col!r} (it has {ds.column_names}); "
                            f"set data.tokens_column / data.tags_column")
    feat = ds.features[cfg.tags_column]
    inner = getattr(feat, "feature", None)
    names = list(inner.names) if hasattr(inner, "names") else None
    cols = ds.select_columns([cfg.tokens_column, cfg.tags_column])[:]
    out = Sentences(f"{name}[{split}] row", lines=list(range(len(cols[cfg.tokens_column]))))
    prefix = cfg.token_prefix
    out.tokens = [[w[len(prefix):] if prefix and w.startswith(prefix) else w for w in ws]
                  for ws in cols[cfg.tokens_column]]
    out.tags = [list(t) for t in cols[cfg.tags_column]]
    if cfg.document_column in ds.column_names:
        out.documents = _number_documents(list(ds[cfg.document_column]))
    return out, names


def _number_documents(ids: Sequence) -> list[int]:
    """Document numbers 0, 1, ... for a column of document ids: a new number wherever the id changes."""
    out: list[int] = []
    for i, d in enumerate(ids):
        out.append(0 if i == 0 else out[-1] + (d != ids[i - 1]))
    return out


def group_sentences(s: Sentences, n: int) -> Sentences:
    """Data without documents: every `n` consecutive sentences become one document (none when `n` is 0)."""
    if n and not s.documents:
        s.documents = [i // n for i in range(len(s.tokens))]
    return s


def drop_empty(s: Sentences) -> Sentences:
    """Leave out sentences without words (a JSONL line with an empty text)."""
    keep = [i for i, t in enumerate(s.tokens) if t]
    if len(keep) == len(s.tokens):
        return s
    return Sentences(s.source, [s.tokens[i] for i in keep], [s.tags[i] for i in keep], [s.lines[i] for i in keep],
                     s.per_word_lines, [s.documents[i] for i in keep] if s.documents else [])


def name_ids(s: Sentences, names: Sequence[str] | None, how: str) -> None:
    """Turn integer tags into names (a ClassLabel's or `data.labels`), in place; DataError at the first id
    that cannot be named."""
    for i, tags in enumerate(s.tags):
        if not any(isinstance(t, int) for t in tags):
            continue
        if not names:
            raise DataError(f"{s.where(i)}: tags are integer ids but no label names are known; list them in "
                            f"data.labels (id order)")
        for k, t in enumerate(tags):
            if isinstance(t, int):
                if not 0 <= t < len(names):
                    raise DataError(f"{s.where(i, k)}: tag id {t} is outside {how} {list(names)}")
                tags[k] = names[t]
