"""`--document-field`: consecutive JSONL lines with the same value are one document for context, each output line
stays its input line's, and shards, slices and `--processes` never cut a document."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest

from flaxner.tagging.lines import document_start, line_document
from flaxner.tagging.reading import LineReader, parse_line
from flaxner.tagging.tagger import Tagger
from helpers import SENTENCES, read_jsonl, tag_config


def doc_lines(n_docs: int, seed: int = 0, field: str = "doc") -> list[dict]:
    """Lines of `n_docs` documents of 1-6 sentences each (one sentence a line), some lines without the field."""
    rng = random.Random(seed)
    out = []
    for d in range(n_docs):
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            rec = {"text": rng.choice(SENTENCES)}
            if d % 5 != 4:  # every fifth document: lines without the field (each alone)
                rec[field] = f"doc{d}" if d % 3 else d  # strings and numbers
            out.append(rec)
    return out


def write(path: Path, recs: list[dict]) -> Path:
    body = "".join(json.dumps(r) + "\n" for r in recs)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(body)
    else:
        path.write_text(body)
    return path


def documents_of(lines) -> list:
    return [line_document(x.raw, "doc") for x in lines]


def test_line_document_and_document_start():
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in
                   [{"doc": "a"}, {"doc": "a"}, {"doc": "a"}, {"x": 1}, {"doc": 2}, {"doc": 2}, {"doc": "b"}])
    assert line_document(b'{"doc": [1, 2]}', "doc") == "[1, 2]" and line_document(b"not json", "doc") is None
    starts = [0] + [i + 1 for i, c in enumerate(raw) if c == ord("\n")]
    f = io.BytesIO(raw)
    # a start inside document "a" moves to the line after it; a line without the field starts its own document
    assert document_start(f, starts[1], len(raw), "doc") == (starts[3], 2)
    assert document_start(f, starts[3], len(raw), "doc") == (starts[3], 0)
    assert document_start(f, starts[4], len(raw), "doc") == (starts[4], 0)
    assert document_start(f, starts[5], len(raw), "doc") == (starts[6], 1)
    assert document_start(f, 0, len(raw), "doc") == (0, 0)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("n", [2, 3, 7])
def test_shards_and_slices_never_cut_a_document(tmp_path, suffix, n):
    recs = doc_lines(40, seed=n)
    src = write(tmp_path / f"c{suffix}", recs)
    shards = [list(LineReader(str(src), (i, n), document_field="doc")) for i in range(n)]
    numbers = [x.number for s in shards for x in s]
    assert numbers == list(range(1, len(recs) + 1))  # every line once, in order
    for a, b in zip(shards, shards[1:]):
        if a and b:
            assert documents_of(a)[-1] is None or documents_of(a)[-1] != documents_of(b)[0]
    if suffix == ".jsonl":  # Ray's slices: byte ranges, numbered from the line count at their raw start
        size = src.stat().st_size
        raw = src.read_bytes()
        got = []
        for i in range(n):
            lo, hi = size * i // n, size * (i + 1) // n
            first = raw[:lo].count(b"\n") + (lo > 0 and raw[lo - 1:lo] != b"\n")
            got += [(x.number, x.raw) for x in LineReader(str(src), document_field="doc").iter_range(lo, hi, first + 1)]
        assert got == [(k + 1, line + b"\n") for k, line in enumerate(raw.splitlines())]
    # without the field the same shards cut where the bytes say (a document may be split)
    plain = [len(list(LineReader(str(src), (i, n)))) for i in range(n)]
    assert sum(plain) == len(recs)


def test_parse_line_keeps_the_document_value():
    from flaxner.tagging.reading import Line

    rec = parse_line(Line(3, b'{"text": "x", "doc": {"b": 1, "a": 2}}\n', 10), "jsonl", document_field="doc")
    assert rec.document == '{"a": 2, "b": 1}' and rec.error is None
    assert parse_line(Line(3, b'{"text": "x"}\n', 10), "jsonl", document_field="doc").document is None
    assert parse_line(Line(3, b'{"text": "x", "doc": 5}\n', 10), "jsonl").document is None  # no field asked


def shifted(ents: list[dict], by: int) -> list[tuple]:
    return [(e["label"], e["start"] + by, e["end"] + by, e["text"]) for e in ents]


@pytest.mark.parametrize("context", ["document", "none"])
def test_lines_of_a_document_are_tagged_as_its_text(tiny_ner_dir, tmp_path, context):
    """Under `document` context the lines of a document, joined, get exactly the predictions of their text as
    one line (windows run across them); under `none` each line is tagged as without the field. Each output line
    keeps its own id and offsets into its own text."""
    recs = doc_lines(12, seed=4)
    src = write(tmp_path / "c.jsonl", recs)
    cfg = dict(max_length=64, stride=16, context=context, lookahead=5)  # documents longer than a window and a chunk
    with_field = Tagger.from_pretrained(tiny_ner_dir, tag_config(**cfg, document_field="doc"))
    out = tmp_path / "o.jsonl"
    summary = with_field.tag_file(str(src), str(out), progress=False)
    got = read_jsonl(out)
    assert summary.lines == len(recs) and [r["id"] for r in got] == list(range(1, len(recs) + 1))
    for r, rec in zip(got, recs, strict=True):
        assert all(rec["text"][e["start"]:e["end"]] == e["text"] for e in r["entities"])
    alone = Tagger.from_pretrained(tiny_ner_dir, tag_config(**cfg))
    if context == "none":
        ref = tmp_path / "ref.jsonl"
        alone.tag_file(str(src), str(ref), progress=False)
        assert [r["entities"] for r in read_jsonl(ref)] == [r["entities"] for r in got]
        return
    # the joined text of each document, tagged as one line, against its lines' entities shifted by their offsets
    groups: list[list[int]] = []
    for i, rec in enumerate(recs):
        if groups and "doc" in rec and recs[groups[-1][-1]].get("doc", object()) == rec["doc"] and \
                len(groups[-1]) < cfg["lookahead"]:  # a document of more lines is cut every `lookahead` lines
            groups[-1].append(i)
        else:
            groups.append([i])
    assert any(len(g) > 2 for g in groups) and any(len(g) == cfg["lookahead"] for g in groups)
    texts = [" ".join(recs[i]["text"] for i in g) for g in groups]
    whole = alone.tag(texts)
    for g, ents in zip(groups, whole, strict=True):
        mine, at = [], 0
        for i in g:
            mine += shifted(got[i]["entities"], at)
            at += len(recs[i]["text"]) + 1
        assert mine == shifted(ents, 0)


def test_shards_with_the_field_concatenate_to_the_whole(tiny_ner_dir, tmp_path):
    recs = doc_lines(30, seed=8)
    src = write(tmp_path / "c.jsonl", recs)
    tagger = Tagger.from_pretrained(tiny_ner_dir, tag_config(max_length=64, stride=16, context="document",
                                                             document_field="doc"))
    whole = tmp_path / "whole.jsonl"
    tagger.tag_file(str(src), str(whole), progress=False)
    parts = []
    for i in range(4):
        part = tmp_path / f"p{i}.jsonl"
        tagger.tag_file(str(src), str(part), shard=f"{i}/4", progress=False)
        parts += read_jsonl(part)
    want = read_jsonl(whole)
    assert [r["id"] for r in parts] == [r["id"] for r in want]
    # the same entities; a score may differ in its last digits (other batch shapes around a row)
    assert [shifted(r["entities"], 0) for r in parts] == [shifted(r["entities"], 0) for r in want]
    np.testing.assert_allclose([e["score"] for r in parts for e in r["entities"]],
                               [e["score"] for r in want for e in r["entities"]], atol=1e-4)


def test_text_input_is_refused(tiny_ner_dir, tmp_path):
    from flaxner.tagging.reading import TagInputError

    src = tmp_path / "c.txt"
    src.write_text("a line\n")
    tagger = Tagger.from_pretrained(tiny_ner_dir, tag_config(document_field="doc"))
    with pytest.raises(TagInputError, match="--document-field doc: .*c.txt is text, not JSONL"):
        tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), progress=False)
