"""The annotation tools' own exports, read as text with character spans: Label Studio (JSON export: tasks with
`annotations[].result[].value`; JSON-MIN: `label: [{start, end, text, labels}]`), Prodigy (`spans`, token offsets
cross-checked against `tokens`, rejected answers skipped) and spaCy DocBin (`.spacy`, with the `spacy` extra).

`readers.read_file` picks the format (`data.format`, or from the content: `detect`) and turns spans into words and
tags; this module only says which spans each record holds, or why it cannot. Doccano's `label: [[s, e, "X"]]` and
the generic `entities`/`spans`/`ents` forms are `readers`' own."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from flaxner.config import DataConfig

# What each format's record looks like, for the errors that name the expected shape.
SHAPES = {
    "label-studio": 'a task {"data": {"text": ...}, "annotations": [{"result": [{"value": {"start", "end", '
                    '"labels": [...]}}]}]}',
    "label-studio-min": '{"text": ..., "label": [{"start", "end", "text", "labels": [...]}]}',
    "prodigy": '{"text": ..., "spans": [{"start", "end", "label", "token_start", "token_end"}], "tokens": [...], '
               '"answer": "accept"}',
    "doccano": '{"text": ..., "label": [[start, end, "LABEL"], ...]}',
    "jsonl": '{"tokens": [...], "ner_tags": [...]} or {"text": ..., "entities": [{"start", "end", "label"}]}',
}
SKIPPED_ANSWERS = ("reject", "ignore")


class AnnotationError(ValueError):
    """A record that does not have the shape of its format (the message names where, and the shape)."""


def json_records(path: Path, cfg: DataConfig, lines) -> Iterator[tuple[str, int, dict]]:
    """(where, line or task index, record) of a JSON array file (Label Studio's exports: `is_json_array`) or of JSON
    Lines (`lines`: the (line number, text) of `readers.text_lines`)."""
    if is_json_array(path):
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            try:
                tasks = json.loads(f.read().decode(cfg.encoding))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise AnnotationError(f"{path}: not a JSON array of tasks ({e})") from None
        if not isinstance(tasks, list):
            raise AnnotationError(f"{path}: expected a JSON array of tasks, got {type(tasks).__name__}")
        for i, rec in enumerate(tasks):
            where = f"{path}: task {i}"
            if not isinstance(rec, dict):
                raise AnnotationError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, i, rec
        return
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise AnnotationError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield f"{path}:{lineno}", lineno, rec


def is_json_array(path: Path) -> bool:
    """Whether the file's first character (past a BOM and whitespace) opens a JSON array."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] == b"["


def detect(rec: dict) -> str:
    """The format of one record, from its keys."""
    if "data" in rec and ("annotations" in rec or "completions" in rec):
        return "label-studio"
    if isinstance(rec.get("spans"), list) and ("tokens" in rec or "answer" in rec or "_input_hash" in rec):
        return "prodigy"
    if _min_key(rec) is not None or {"annotation_id", "annotator"} <= rec.keys():  # JSON-MIN, with or without spans
        return "label-studio-min"
    return "jsonl"


def _min_key(rec: dict) -> str | None:
    """The key of a JSON-MIN record's spans (the labeling config's from_name, `label` by default)."""
    for k, v in rec.items():
        if isinstance(v, list) and v and all(isinstance(s, dict) and "labels" in s for s in v):
            return k
    return None


def _text_of(data: dict, where: str, shape: str) -> str:
    text = data.get("text")
    if text is None:  # a labeling config whose Text tag reads another key: the one string there is
        strings = [v for v in data.values() if isinstance(v, str)]
        text = strings[0] if len(strings) == 1 else None
    if not isinstance(text, str):
        raise AnnotationError(f"{where}: no 'text' string (keys {sorted(data)}); expected {shape}")
    return text


def _labelled(value: dict, text: str, where: str, shape: str) -> tuple[int, int, str]:
    """(start, end, label) of a Label Studio span value, its `text` checked against the task's text."""
    labels, a, b = value.get("labels"), value.get("start"), value.get("end")
    if (not isinstance(labels, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b))
            or not labels or not all(isinstance(x, str) for x in labels)):
        raise AnnotationError(f"{where}: a span must be {{start, end, labels: [LABEL]}}, got {value!r}; expected "
                              f"{shape}")
    if len(labels) > 1:
        raise AnnotationError(f"{where}: span [{a}, {b}) has labels {labels}: one label per span (nested or multi-"
                              f"label spans cannot be written as one tag per word)")
    _check_text(value.get("text"), text, a, b, where)
    return a, b, labels[0]


def _check_text(said, text: str, a: int, b: int, where: str) -> None:
    if isinstance(said, str) and 0 <= a <= b <= len(text) and text[a:b] != said:
        raise AnnotationError(f"{where}: span [{a}, {b}) says {said!r} but the text there is {text[a:b]!r} "
                              f"(offsets must count Unicode characters of the text)")


def label_studio(rec: dict, where: str, annotation: int, skipped: Counter) -> tuple[str, list] | None:
    """The text and spans of a Label Studio task: its first annotation not cancelled (or `annotation`, an index);
    None (counted in `skipped`) for a task without one."""
    shape = SHAPES["label-studio"]
    data = rec.get("data")
    if not isinstance(data, dict):
        raise AnnotationError(f"{where}: 'data' must be an object; expected {shape}")
    text = _text_of(data, where, shape)
    anns = rec.get("annotations", rec.get("completions"))
    if not isinstance(anns, list):
        raise AnnotationError(f"{where}: 'annotations' must be a list; expected {shape}")
    if annotation >= 0:
        ann = anns[annotation] if annotation < len(anns) else None
    else:
        ann = next((a for a in anns if isinstance(a, dict) and not (a.get("was_cancelled") or a.get("skipped"))),
                   None)
    if ann is None:
        skipped["label-studio task without " + ("that annotation" if annotation >= 0 else "an annotation")] += 1
        return None
    result = ann.get("result") if isinstance(ann, dict) else None
    if not isinstance(result, list):
        raise AnnotationError(f"{where}: an annotation's 'result' must be a list; expected {shape}")
    spans = []
    for r in result:
        value = r.get("value") if isinstance(r, dict) else None
        if not isinstance(value, dict) or "labels" not in value:
            continue  # relations, choices, text areas: not entity spans
        spans.append(_labelled(value, text, where, shape))
    return text, spans


def label_studio_min(rec: dict, where: str) -> tuple[str, list]:
    """The text and spans of a JSON-MIN record (no key of spans: no entities)."""
    shape = SHAPES["label-studio-min"]
    text = _text_of({k: v for k, v in rec.items() if k not in ("annotator", "created_at", "updated_at")}, where,
                    shape)
    key = _min_key(rec)
    return text, [_labelled(v, text, where, shape) for v in (rec[key] if key else [])]


def prodigy(rec: dict, where: str, skipped: Counter) -> tuple[str, list] | None:
    """The text and spans of a Prodigy record; token offsets checked against `tokens`; None for a rejected or
    ignored answer."""
    shape = SHAPES["prodigy"]
    if rec.get("answer") in SKIPPED_ANSWERS:
        skipped[f"prodigy answer {rec['answer']!r}"] += 1
        return None
    text, spans, tokens = rec.get("text"), rec.get("spans") or [], rec.get("tokens")
    if not isinstance(text, str) or not isinstance(spans, list):
        raise AnnotationError(f"{where}: expected {shape}")
    out = []
    for s in spans:
        if not isinstance(s, dict) or not isinstance(s.get("label"), str) or not all(
                isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("start", "end")):
            raise AnnotationError(f"{where}: a span must be {{start, end, label}}, got {s!r}; expected {shape}")
        a, b = s["start"], s["end"]
        _check_text(s.get("text"), text, a, b, where)
        if isinstance(tokens, list) and "token_start" in s and "token_end" in s:
            ts, te = s["token_start"], s["token_end"]  # token_end is inclusive
            ok = (isinstance(ts, int) and isinstance(te, int) and 0 <= ts <= te < len(tokens)
                  and all(isinstance(tokens[k], dict) for k in (ts, te)))
            if not ok or tokens[ts].get("start") != a or tokens[te].get("end") != b:
                got = (tokens[ts].get("start"), tokens[te].get("end")) if ok else "tokens out of range"
                raise AnnotationError(f"{where}: span [{a}, {b}) {s['label']!r} has token_start {ts}, token_end {te} "
                                      f"whose characters are {got}: the token and character offsets disagree")
        out.append((a, b, s["label"]))
    return text, out


def read_docbin(path: Path, cfg: DataConfig):
    """A spaCy DocBin: each Doc a document, its sentences (when it has them) sentences, tags from its entities."""
    from flaxner.data.readers import DataError, Sentences

    try:
        from spacy.tokens import DocBin
        from spacy.vocab import Vocab
    except ImportError:
        raise DataError(f"{path}: a spaCy DocBin needs spaCy: pip install 'flaxner[spacy]'") from None
    try:
        docs = list(DocBin().from_disk(path).get_docs(Vocab()))
    except Exception as e:  # noqa: BLE001 (msgpack, zlib, spaCy's own errors): one line naming the file
        raise DataError(f"{path}: not a spaCy DocBin ({type(e).__name__}: {e}); expected a file written by "
                        f"DocBin.to_disk") from None
    out = Sentences(str(path), unit="doc ")
    for i, doc in enumerate(docs):
        for sent in (doc.sents if doc.has_annotation("SENT_START") else [doc]):
            toks = [t for t in sent if not t.is_space]
            if not toks:
                continue
            out.tokens.append([t.text for t in toks])
            out.tags.append([f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O" for t in toks])
            out.lines.append(i)
            out.documents.append(i)
    return out
