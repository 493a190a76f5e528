"""What `flaxner tag --format` writes: a table of formats keyed by name (`FORMATS`; a new format is a row).

A line format (jsonl, conll) turns each input line's record into bytes that the writer appends and commits, so
`--resume`, `--processes`' concatenation and Ray's `--join` handle it as they handle JSON lines. A whole-file format
(label-studio: one JSON array of tasks; spacy: a DocBin; html: a page) cannot be appended to: every engine stages
each record as one JSON line (`staged_line`: line, id, text, entities or error) in the part file it commits and
resumes as usual, and `assemble_file` writes the file from the staged lines once all are there (through a temporary
file and a rename, under the output's lock; an interrupted assembly runs again on `--resume`).

It imports no JAX (`processes` and Ray's driver assemble too); spaCy only when a DocBin is written."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from flaxner.data.words import split_words
from flaxner.tagging.outpolicy import open_new, open_own
from flaxner.tagging.reading import Record, TagInputError
from flaxner.tagging.writing import check_output, default_output, output_line


@dataclass(frozen=True)
class OutputSpec:
    """What to write: the format and what its records carry."""

    format: str = "jsonl"
    id_field: str = "id"
    keep_fields: bool = False
    model_version: str = "flaxner"  # Label Studio's `model_version` of each prediction
    staged: bool = False  # write staged lines even for a line format (Ray's slices, --processes' shards)

    def key(self) -> dict:
        """What --resume compares (a staged part file must be finished into the same format)."""
        return {k: v for k, v in asdict(self).items() if k not in ("id_field", "keep_fields")}


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # of the default output name: corpus.jsonl -> corpus.entities<suffix>
    line: Callable[[Record, list | None, OutputSpec], bytes] | None = None  # a line format's bytes per record
    whole: Callable[[Iterator[dict], BinaryIO, OutputSpec], dict] | None = None  # staged records -> the file
    extra: str = ""  # the module it needs, and the pip extra that installs it


def jsonl_line(rec: Record, ents: list | None, spec: OutputSpec) -> bytes:
    return output_line(rec, ents, spec.keep_fields, spec.id_field)


def word_tags(text: str, ents: list[dict]) -> list[tuple[str, str]]:
    """The words of `text` (CoNLL-2003's split, `flaxner.data.words`) with IOB2 tags from the entities' characters:
    B- on an entity's first word, I- on the words after it that it touches."""
    words = split_words(text)
    tags = ["O"] * len(words)
    k = 0
    for e in sorted(ents, key=lambda e: e["start"]):
        first = True
        while k < len(words) and words[k][1] <= e["start"]:
            k += 1
        j = k
        while j < len(words) and words[j][0] < e["end"]:
            tags[j] = ("B-" if first else "I-") + e["label"]
            first = False
            j += 1
        k = j
    return [(text[a:b], t) for (a, b), t in zip(words, tags, strict=True)]


def conll_block(rec: Record, ents: list | None, spec: OutputSpec) -> bytes:
    """A word and its tag per line (tab-separated), a blank line after each input line; nothing for an error or a
    text without words (the summary counts errors; `--format jsonl` shows them)."""
    if rec.error is not None or not rec.text:
        return b""
    rows = word_tags(rec.text, ents or [])
    return "".join(f"{w}\t{t}\n" for w, t in rows).encode("utf-8", "surrogatepass") + (b"\n" if rows else b"")


def staged_line(rec: Record, ents: list | None, spec: OutputSpec) -> bytes:
    """One record as a JSON line for a whole-file format to be assembled from."""
    out: dict[str, Any] = {"line": rec.line, "id": rec.id}
    if rec.error is not None:
        out["error"] = rec.error
    else:
        out["text"], out["entities"] = rec.text, ents
    if rec.warning:
        out["warning"] = rec.warning
    if spec.keep_fields and rec.fields:
        out["fields"] = rec.fields
    try:
        return (json.dumps(out, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):  # fields that cannot be written: left out
        out.pop("fields", None)
        return (json.dumps(out, allow_nan=False) + "\n").encode("ascii")


def staged_records(lines: Iterable[bytes]) -> Iterator[dict]:
    for line in lines:
        if line.strip():
            yield json.loads(line)


def _record(d: dict) -> tuple[Record, list | None]:
    rec = Record(d["line"], d["id"], d.get("text"), d.get("fields"), d.get("error"), d.get("warning"))
    return rec, d.get("entities")


def label_studio_task(d: dict, spec: OutputSpec) -> dict:
    """A Label Studio task whose `predictions` hold the entities (pre-annotations for the standard NER labeling
    config: `<Labels name="label" toName="text">`, `<Text name="text" value="$text">`)."""
    ents = d["entities"]
    result = [{"id": f"{d['line']}-{k}", "from_name": "label", "to_name": "text", "type": "labels",
               "value": {"start": e["start"], "end": e["end"], "text": e["text"], "labels": [e["label"]]},
               "score": e["score"]} for k, e in enumerate(ents)]
    pred: dict[str, Any] = {"model_version": spec.model_version, "result": result}
    if ents:
        pred["score"] = min(e["score"] for e in ents)  # the least sure entity: review the doubtful tasks first
    return {"data": {"id": d["id"], **(d.get("fields") or {}), "text": d["text"]}, "predictions": [pred]}


def write_label_studio(records: Iterator[dict], f: BinaryIO, spec: OutputSpec) -> dict:
    """A JSON array of tasks, one a line (records with an error are left out)."""
    n = 0
    f.write(b"[")
    for d in records:
        if "error" in d:
            continue
        f.write((",\n" if n else "\n").encode() + json.dumps(label_studio_task(d, spec), ensure_ascii=False)
                .encode("utf-8", "surrogatepass"))
        n += 1
    f.write(b"\n]\n")
    return {"written": n}


def spacy_words(text: str) -> tuple[list[str], list[bool]]:
    """spaCy's `Doc(words, spaces)` for `text` in CoNLL-2003's words: other whitespace than one space after a word
    becomes a whitespace token, so that the Doc's text is `text`."""
    words: list[str] = []
    spaces: list[bool] = []
    pos = 0
    for a, b in [*split_words(text), (len(text), len(text))]:
        gap = text[pos:a]
        if gap and words and gap[0] == " " and not spaces[-1]:
            spaces[-1], gap = True, gap[1:]
        if gap:
            words.append(gap)
            spaces.append(False)
        if b > a:
            words.append(text[a:b])
            spaces.append(False)
        pos = b
    return words, spaces


def write_docbin(records: Iterator[dict], f: BinaryIO, spec: OutputSpec) -> dict:
    """A spaCy DocBin: a Doc per tagged record (its text, `doc.ents`; id, line and entity scores in
    `doc.user_data["flaxner"]`)."""
    from spacy.tokens import Doc, DocBin
    from spacy.vocab import Vocab

    vocab = Vocab()
    db = DocBin(store_user_data=True)
    for d in records:
        if "error" in d:
            continue
        words, spaces = spacy_words(d["text"])
        doc = Doc(vocab, words=words, spaces=spaces)
        ents, scores, end = [], [], -1
        for e in d["entities"]:
            span = doc.char_span(e["start"], e["end"], e["label"], alignment_mode="expand")
            if span is not None and span.start >= end:  # --words tokenizer: a word two entities share goes to one
                ents.append(span)
                scores.append(e["score"])
                end = span.end
        doc.ents = ents
        doc.user_data["flaxner"] = {"id": d["id"], "line": d["line"], "scores": scores}
        db.add(doc)
    f.write(db.to_bytes())
    return {"written": len(db)}


def write_html(records: Iterator[dict], f: BinaryIO, spec: OutputSpec) -> dict:
    from flaxner.data.display import html_page

    return html_page(records, f, spec.model_version)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("jsonl", ".entities.jsonl", line=jsonl_line),
    Format("conll", ".entities.conll", line=conll_block),
    Format("label-studio", ".entities.json", whole=write_label_studio),
    Format("spacy", ".entities.spacy", whole=write_docbin, extra="spacy"),
    Format("html", ".entities.html", whole=write_html),
)}


def record_bytes(spec: OutputSpec, rec: Record, ents: list | None) -> bytes:
    """What one record adds to the output (or to its staged part file)."""
    fmt = FORMATS[spec.format]
    if fmt.line is None or spec.staged:
        return staged_line(rec, ents, spec)
    return fmt.line(rec, ents, spec)


def is_whole(name: str) -> bool:
    return FORMATS[name].whole is not None


def check_spec(spec: OutputSpec, output: str) -> None:
    """Before any work: a format whose module is missing, or that cannot be written where asked."""
    fmt = FORMATS[spec.format]
    if fmt.extra and importlib.util.find_spec(fmt.extra) is None:
        raise TagInputError(f"--format {fmt.name} needs {fmt.extra}: pip install 'flaxner[{fmt.extra}]'")
    if fmt.whole is not None and not spec.staged:
        if output == "-":
            raise TagInputError(f"--format {fmt.name} writes a whole file at the end: give -o FILE, not stdout")
        if output.endswith(".gz"):
            raise TagInputError(f"-o {output}: --format {fmt.name} is not written gzipped; name a file without .gz")


def write_from_staged(spec: OutputSpec, lines: Iterable[bytes], out: BinaryIO) -> dict:
    """The format's output from staged lines: a line format record by record, a whole-file format at once."""
    fmt = FORMATS[spec.format]
    if fmt.whole is not None:
        return fmt.whole(staged_records(lines), out, spec)
    n = 0
    for d in staged_records(lines):
        out.write(fmt.line(*_record(d), spec))
        n += 1
    return {"written": n}


def assemble_file(spec: OutputSpec, staged: list[Path], target: str) -> None:
    """Write `target` from the staged files, in order, through `target.<random>.assembling` (created exclusively)
    and a rename; the leftovers of interrupted assemblies (their names prove them flaxner's) are removed first."""
    folder, name = Path(target).parent, Path(target).name
    ours = re.compile(re.escape(name) + r"\.[0-9a-f]{12}\.assembling")
    for old in folder.iterdir():
        if ours.fullmatch(old.name) and not old.is_symlink() and old.is_file():
            old.unlink()
    tmp = folder / f"{name}.{uuid.uuid4().hex[:12]}.assembling"

    def lines() -> Iterator[bytes]:
        for path in staged:
            with open_own(path) as src:
                yield from src

    with open_new(tmp) as out:
        write_from_staged(spec, lines(), out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


def default_suffix(name: str) -> str:
    return FORMATS[name].suffix


def checked_output(args) -> tuple[str, OutputSpec]:
    """`flaxner tag`'s output path (-o, else the input's name with the format's suffix) and OutputSpec, checked
    (`check_spec`, and `outpolicy.check_output`: never an input, a link, nor an existing file without --overwrite)."""
    output = args.output or default_output(args.input, default_suffix(args.format))
    check_spec(spec := spec_of(args), output)
    check_output(output, args.input, fresh=not (args.resume or args.overwrite))
    return output, spec


def spec_of(args) -> OutputSpec:
    """The OutputSpec of `flaxner tag`'s options (the model_version: --model-version, else the run folder's name)."""
    version = args.model_version
    if version is None:
        p = Path(args.model.rstrip("/")).resolve() if "://" not in args.model else Path(args.model)
        version = p.parent.name if p.name == "model" else p.name
    return OutputSpec(args.format, args.id_field, args.keep_fields, version, getattr(args, "staged", False))
