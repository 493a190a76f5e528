"""Faults and bad inputs of `flaxner tag`: each ends in a recovery or one clear line, and nothing is lost.

Each test asserts the exact outcome (docs/reliability.md, "Tagging", lists them)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from flaxner.tagging.reading import Line, LineReader, TagInputError, parse_line
from flaxner.tagging.writing import OutputWriter, TagInterrupted, check_output, output_line
from helpers import SENTENCES, corpus as _corpus, read_jsonl as _read, write_jsonl as _write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def _lines(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def _tag(*argv) -> tuple[int, str]:
    """`flaxner tag ARGV` in this process: (exit status, stderr)."""
    import contextlib
    import io

    from flaxner.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["tag", *map(str, argv)])
    return rc, err.getvalue()


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# ---- refused before any work -------------------------------------------------------------------------------------

def test_output_that_is_the_input_is_refused(tmp_path):
    src = _write_jsonl(tmp_path / "same.jsonl", SENTENCES)
    before = src.read_bytes()
    rc, err = _tag(src, "-o", src, "--model", tmp_path, "--no-progress")
    assert rc == 2 and "is the input file" in err and err.count("\n") == 1
    (tmp_path / "link.jsonl").symlink_to(src)
    rc, err = _tag(src, "-o", tmp_path / "link.jsonl", "--model", tmp_path, "--overwrite")
    assert rc == 2 and "is the input file" in err
    part_is_input = tmp_path / "x.jsonl.part"  # the output's part file would be the input
    part_is_input.write_bytes(before)
    with pytest.raises(TagInputError, match=r"x.jsonl.part is the input file"):
        check_output(str(tmp_path / "x.jsonl"), str(part_is_input))
    assert src.read_bytes() == part_is_input.read_bytes() == before


def test_shard_output_that_is_the_input_is_refused(tmp_path):
    src = tmp_path / "o.jsonl.shard1of2"
    _write_jsonl(src, SENTENCES)
    rc, err = _tag(src, "-o", tmp_path / "o.jsonl", "--processes", "2", "--model", tmp_path)
    assert rc == 2 and "is the input file" in err and err.count("\n") == 1
    assert len(_lines(src)) == len(SENTENCES)


def test_output_folder_is_refused_before_any_work(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    (tmp_path / "out").mkdir()
    rc, err = _tag(src, "-o", tmp_path / "out", "--model", tmp_path / "out", "--overwrite")
    assert rc == 2 and "is a folder" in err and "flush of closed file" not in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "out"]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    """x.jsonl and x.txt both default to x.entities.jsonl: the second run is refused, not silently replacing."""
    (tmp_path / "x.entities.jsonl").write_text('{"id": 1, "entities": []}\n')
    (tmp_path / "x.txt").write_text("Peter Blackburn\n")
    rc, err = _tag(tmp_path / "x.txt", "--model", tmp_path)
    assert rc == 2 and "x.entities.jsonl exists; pass --overwrite" in err and err.count("\n") == 1
    assert _lines(tmp_path / "x.entities.jsonl") == ['{"id": 1, "entities": []}']
    (tmp_path / "y.jsonl.part").write_text("")
    with pytest.raises(TagInputError, match="interrupted run's output is there; pass --resume"):
        OutputWriter(str(tmp_path / "y.jsonl"), {})


def test_resume_from_stdin_needs_resume_stdin(tmp_path):
    rc, err = _tag("-", "-o", tmp_path / "o.jsonl", "--resume", "--model", tmp_path)
    assert rc == 2 and "--resume-stdin" in err and err.count("\n") == 1


# ---- planted symlinks and files: never written through, never clobbered ---------------------------------------

@pytest.mark.parametrize("planted", ["", ".part", ".part.tmp", ".part.lock", ".part.json"])
def test_planted_symlinks_are_never_written_through(tmp_path, planted):
    """A symlink at the output or at its part, sidecar-temp, lock or sidecar file: the CLI refuses before any work,
    naming it; the writer itself refuses it or replaces the link; the link's target is never written."""
    src = _write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me\n")
    out = str(tmp_path / "o.jsonl")
    os.symlink(secret, out + planted)
    for flags in (["--overwrite"], []):
        rc, err = _tag(src, "-o", out, "--model", tmp_path, "--no-progress", *flags)
        assert rc == 2 and f"-o {out}{planted}: is a symlink" in err and err.count("\n") == 1, err
    try:  # the writer, as `Tagger.tag_file` drives it after its checks (or were the link planted meanwhile)
        w = OutputWriter(out, {"k": 1}, overwrite=True)
        w.write(b"{}\n")
        w.commit(2, 3)
        w.finish()
    except TagInputError as e:
        assert f"{out}{planted}" in str(e)
    assert secret.read_text() == "keep me\n"
    assert planted == "" or not os.path.islink(out)


def test_a_killed_writers_lock_and_sidecar_temp_are_replaced_anything_else_refused(tmp_path):
    out = str(tmp_path / "o.jsonl")
    lock, tmp = Path(out + ".part.lock"), Path(out + ".part.tmp")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")  # a writer killed outright leaves its lock, its PID dead
    tmp.write_text(json.dumps({"key": {"k": 1}, "bytes": 0, "next_line": 1}))  # ... or its sidecar's temp file
    w = OutputWriter(out, {"k": 1})
    w.write(b"{}\n")
    w.commit(2, 3)
    w.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]
    lock.write_text("my notes\n")  # not a lock of flaxner's: kept, refused
    with pytest.raises(TagInputError, match=r"o.jsonl.part.lock: a file that is not a lock of flaxner's"):
        OutputWriter(out, {"k": 1}, overwrite=True)
    lock.write_text(f"{os.getppid()}\n")  # its PID alive: another writer
    with pytest.raises(TagInputError, match="another flaxner tag is writing it"):
        OutputWriter(out, {"k": 1}, overwrite=True)
    lock.unlink()
    tmp.write_text("my notes\n")
    w = OutputWriter(out, {"k": 1}, overwrite=True)
    w.write(b"{}\n")
    with pytest.raises(TagInputError, match=r"o.jsonl.part.tmp: a file flaxner cannot prove it wrote is there"):
        w.commit(2, 3)
    w.close()
    assert lock.exists() is False and tmp.read_text() == "my notes\n"


def test_processes_refuse_a_fresh_runs_part_and_planted_links(tmp_path):
    """`--processes`: an interrupted run's OUT.part (which the join would replace) and a link at a shard's output or
    log are refused before any child starts."""
    src = _write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    out = tmp_path / "o.jsonl"
    log_is_input = _write_jsonl(tmp_path / "o.jsonl.shard0of2.log", SENTENCES)  # a shard's log would be the input
    rc, err = _tag(log_is_input, "-o", out, "--processes", "2", "--model", tmp_path)
    assert rc == 2 and "o.jsonl.shard0of2.log is the input file" in err and err.count("\n") == 1
    assert len(_lines(log_is_input)) == len(SENTENCES)
    log_is_input.unlink()
    Path(f"{out}.part").write_text("an interrupted run's lines\n")
    rc, err = _tag(src, "-o", out, "--processes", "2", "--model", tmp_path)
    assert rc == 2 and "o.jsonl.part: an interrupted run's output is there; pass --resume" in err
    assert err.count("\n") == 1 and Path(f"{out}.part").read_text() == "an interrupted run's lines\n"
    Path(f"{out}.part").unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me\n")
    for planted in (".shard1of2", ".shard0of2.log"):
        os.symlink(secret, f"{out}{planted}")
        rc, err = _tag(src, "-o", out, "--processes", "2", "--model", tmp_path, "--overwrite")
        assert rc == 2 and f"{out}{planted}: is a symlink" in err and err.count("\n") == 1, err
        os.unlink(f"{out}{planted}")
    Path(f"{out}.shard0of2.log").write_text("my notes\n")  # not a log of flaxner's (no header): kept
    rc, err = _tag(src, "-o", out, "--processes", "2", "--model", tmp_path, "--overwrite")
    assert rc == 2 and "o.jsonl.shard0of2.log: a file flaxner cannot prove it wrote" in err and err.count("\n") == 1
    assert Path(f"{out}.shard0of2.log").read_text() == "my notes\n"
    Path(f"{out}.shard0of2.log").unlink()
    assert secret.read_text() == "keep me\n" and not list(tmp_path.glob("o.jsonl*"))


def test_every_tag_option_has_help():
    from flaxner.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tag = sub.choices["tag"]
    missing = [a.dest for a in tag._actions if not a.help]
    assert missing == []


def test_processes_children_get_every_shared_option():
    """The table that declares the tag options is the one --processes passes on."""
    from flaxner.cli import TAG_OPTIONS, build_parser, tag_child_args

    args = build_parser().parse_args(["tag", "in.jsonl", "--model", "m", "--text-field", "body", "--keep-fields",
                                      "--max-line-bytes", "5", "--stride", "8", "--processes", "2", "--overwrite",
                                      "--context-views", "full,none", "--sentence-thresholds", "0.3,0.7"])
    got = tag_child_args(args)
    assert got == ["--text-field", "body", "--id-field", "id", "--keep-fields", "--input-format", "auto", "--format",
                   "jsonl", "--context-views", "full,none", "--sentence-thresholds", "0.3,0.7", "--stride", "8",
                   "--max-line-bytes", "5", "--commit-every", "5.0", "--on-error", "record"]
    child = build_parser().parse_args(["tag", "x", "--model", "m", *got])
    assert args.context_views == child.context_views == ("full", "none")  # a child reads its parent's views back
    assert args.sentence_thresholds == child.sentence_thresholds == (0.3, 0.7)
    passed = {f[-1] for f, _, engines in TAG_OPTIONS if "p" in engines}
    assert {"--model", "--output", "--shard", "--resume", "--processes"}.isdisjoint(passed)


# ---- one bad line never ends the run -----------------------------------------------------------------------------

BAD = {
    "deep": b'{"text": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "digits": b'{"text": "x", "n": ' + b"7" * 5000 + b"}",
    "deep_text": b"[" * 100_000,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_parse_line_never_raises(name):
    rec = parse_line(Line(3, BAD[name] + b"\n", 10), "jsonl")
    assert rec.error is not None and rec.error.startswith("line 3: ") and rec.text is None


def test_parse_line_never_raises_on_random_bytes():
    import random

    rng = random.Random(0)
    alphabet = b'{}[]",:0123456789.eE-+ntrufalse\\\xff\xc3\xa9\r\n \tNaIifinity'
    for i in range(3000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        rec = parse_line(Line(i + 1, raw, 0), "jsonl")
        assert (rec.error is None) == isinstance(rec.text, str)
        json.loads(output_line(rec, [] if rec.error is None else None, keep_fields=True))  # always valid JSON


def test_bad_lines_do_not_end_the_run(tagger, tmp_path):
    src = tmp_path / "c.jsonl"
    good = [json.dumps({"text": t}).encode() for t in SENTENCES[:3]]
    src.write_bytes(b"\n".join([good[0], BAD["deep"], good[1], BAD["digits"], good[2]]) + b"\n")
    summary = tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), progress=False)
    out = _read(tmp_path / "o.jsonl")
    assert [("error" in r, r["id"]) for r in out] == [(False, 1), (True, 2), (False, 3), (True, 4), (False, 5)]
    assert "RecursionError" in out[1]["error"] and "ValueError" in out[3]["error"]
    assert summary["errors"] == 2 and summary["lines"] == 5


def test_json_error_wording():
    rec = parse_line(Line(1, b'{"text": "a\x01b"}', 0), "jsonl")
    assert rec.error == "line 1: not JSON (Invalid control character at column 12)"


def test_nan_and_infinity_are_written_as_null(tagger, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_bytes(b'{"text": "Peter Blackburn", "x": NaN, "y": [Infinity, -Infinity, 1e999, 1.5]}\n')
    tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), keep_fields=True, progress=False)
    raw = (tmp_path / "o.jsonl").read_text()

    def refuse(c):
        raise AssertionError(f"bare {c} written")

    (row,) = [json.loads(x, parse_constant=refuse) for x in raw.splitlines()]
    assert row["x"] is None and row["y"] == [None, None, None, 1.5] and "entities" in row
    assert "read as null" in row["warning"]


def test_bom_at_the_start_is_not_an_error(tagger, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "Peter Blackburn"}).encode() + b"\n"
                    + json.dumps({"id": "b", "text": "\ufeffBRUSSELS"}).encode() + b"\n")
    tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), progress=False)
    out = _read(tmp_path / "o.jsonl")
    assert [r["id"] for r in out] == ["a", "b"] and all("entities" in r for r in out)
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"\xef\xbb\xbfPeter Blackburn\n")
    rec = parse_line(Line(1, txt.read_bytes(), 0), "txt")
    assert rec.text == "Peter Blackburn"


def test_blank_lines_are_empty_records_in_jsonl_as_in_text(tagger, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_bytes(b'{"text": "Peter Blackburn"}\n\n   \r\n{"text": "BRUSSELS"}\n\n')
    tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), progress=False)
    out = _read(tmp_path / "o.jsonl")
    assert len(out) == 5 and [r["id"] for r in out] == [1, 2, 3, 4, 5]
    assert out[1] == {"id": 2, "entities": []} and out[4] == {"id": 5, "entities": []} and "error" not in out[2]


def test_keep_fields_precedence():
    obj = {"id": "in", "doc": 7, "text": "t", "entities": ["mine"], "error": "old", "warning": "w",
           "input_error": "taken"}
    rec = parse_line(Line(1, json.dumps(obj).encode(), 0), "jsonl", id_field="doc")
    out = json.loads(output_line(rec, [], keep_fields=True, id_field="doc"))
    assert out["id"] == 7 and out["entities"] == [] and "error" not in out and "warning" not in out
    assert out["input_id"] == "in" and out["input_entities"] == ["mine"] and out["input_warning"] == "w"
    assert out["input_error"] == "taken" and out["input_input_error"] == "old" and out["doc"] == 7
    rec = parse_line(Line(1, json.dumps(obj).encode(), 0), "jsonl")  # --id-field id: the id is the input's
    out = json.loads(output_line(rec, [], keep_fields=True))
    assert out["id"] == "in" and "input_id" not in out and "error" not in out


def test_lines_over_the_cap_are_error_records_read_in_bounded_memory(tmp_path):
    src = tmp_path / "c.jsonl"
    big = 20_000_000
    with src.open("wb") as f:
        f.write(b'{"text": "a"}\n{"text": "' + b"x" * big + b'"}\n{"text": "b"}\n{"text": "' + b"y" * 100 + b'"}')
    tracemalloc.start()
    lines = [(ln.number, ln.error, len(ln.raw)) for ln in LineReader(str(src), max_line_bytes=1000)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000  # the 20 MB line is never held
    assert [n for n, _, _ in lines] == [1, 2, 3, 4]
    assert lines[1][1] == (f"line 2: {big + 13:,} bytes, over the --max-line-bytes cap of 1,000; not read "
                           f"(raise the cap to tag it)") and lines[1][2] == 0
    assert lines[0][1] is None and lines[2][1] is None and lines[3][1] is None
    cut = [(ln.number, ln.error) for ln in LineReader(str(src), max_line_bytes=20)]
    assert [e is None for _, e in cut] == [True, False, True, False]
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert [(ln.number, ln.error is None) for ln in LineReader(str(gz), max_line_bytes=1000)] == \
        [(1, True), (2, False), (3, True), (4, True)]


def test_a_line_over_the_cap_in_a_tagged_file(tagger, tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", ["Peter Blackburn", "x " * 3000, "BRUSSELS"])
    summary = tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), max_line_bytes=1000, progress=False)
    out = _read(tmp_path / "o.jsonl")
    assert "entities" in out[0] and "entities" in out[2] and "--max-line-bytes" in out[1]["error"]
    assert summary["errors"] == 1


# ---- damaged input ------------------------------------------------------------------------------------------------

def _truncated_gz(path: Path, texts: list[str]) -> int:
    """A gzip of `texts` as JSONL cut short; returns how many whole lines survive in it."""
    data = gzip.compress("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode(),
                         mtime=0)
    cut = data[: len(data) * 2 // 3]
    path.write_bytes(cut)
    try:
        readable = gzip.decompress(cut)
    except EOFError:
        import zlib

        readable = zlib.decompressobj(31).decompress(cut)
    return readable.count(b"\n")


def test_truncated_gzip_tags_every_readable_line_then_one_error(tiny_ner_dir, tmp_path):
    texts = _corpus(400, seed=3)
    src = tmp_path / "c.jsonl.gz"
    whole = _truncated_gz(src, texts)
    assert whole > 50
    out = tmp_path / "o.jsonl"
    rc, err = _tag(src, "-o", out, "--model", tiny_ner_dir, "--no-progress", "--max-length", "64", "--stride", "16")
    assert rc == 1 and err.strip().splitlines()[-1].startswith(f"flaxner tag: error: {src}: damaged after line")
    _no_traceback(err)
    summary = json.loads(next(x for x in err.splitlines() if x.startswith('{"summary"')))["summary"]
    assert list(summary)[-1] == "input_damaged" and summary["input_damaged"].startswith(f"{src}: damaged after")
    rows = _read(out)
    good = [r for r in rows if "entities" in r]
    assert [r["id"] for r in good] == list(range(whole))  # every whole line before the cut is tagged
    assert "damaged after line" in rows[-1]["error"] and sum("damaged" in r.get("error", "") for r in rows) == 1
    assert len(rows) <= whole + 2  # at most the cut line (not JSON) and the damage record


def test_truncated_gzip_shards_together_cover_the_readable_lines(tagger, tmp_path):
    src = tmp_path / "c.jsonl.gz"
    whole = _truncated_gz(src, _corpus(300, seed=4))
    rows = []
    for i in range(3):
        tagger.tag_file(str(src), str(tmp_path / f"p{i}.jsonl"), shard=f"{i}/3", progress=False)
        rows += _read(tmp_path / f"p{i}.jsonl")
    assert [r["id"] for r in rows if "entities" in r] == list(range(whole))
    assert sum("damaged" in r.get("error", "") for r in rows) == 1 and "damaged" in rows[-1]["error"]


def test_gzip_shards_decompress_what_precedes_their_slice_once(tmp_path, monkeypatch):
    """A gzip shard counts the lines in one pass that leaves marks, then starts at the mark before its slice: the
    last of 4 shards decompresses the file once plus about its own quarter (not twice the file)."""
    import functools
    import random

    from flaxner.tagging import reading

    rng = random.Random(1)
    lines = [(" ".join(f"{rng.getrandbits(40):x}" for _ in range(rng.randint(0, 30))) + "\n").encode()
             for i in range(40_000)]  # about as compressible as text: a mark every few hundred kB
    body = b"".join(lines)
    half = len(body) // 2
    src = tmp_path / "c.txt.gz"
    src.write_bytes(gzip.compress(body[:half]) + gzip.compress(body[half:]))  # two members
    decompressed = {"n": 0}
    real_fill = reading.Gunzip.fill

    def fill(self):
        out = real_fill(self)
        decompressed["n"] += len(out)
        return out

    monkeypatch.setattr(reading.Gunzip, "fill", fill)
    monkeypatch.setattr(reading, "count_gz_lines", functools.partial(reading.count_gz_lines, spacing=1 << 16,
                                                                    most=64))
    got = []
    for i in range(4):
        decompressed["n"] = 0
        got += [ln.raw for ln in LineReader(str(src), (i, 4))]
        assert decompressed["n"] <= len(body) * (1 + 1 / 4 + 1 / 32) + (2 << 20), i
    assert got == lines


# ---- resume checks the input --------------------------------------------------------------------------------------

def _interrupt_after(monkeypatch, n: int) -> None:
    real, calls = OutputWriter.write, {"n": 0}

    def write(self, data, *lines):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        real(self, data, *lines)

    monkeypatch.setattr(OutputWriter, "write", write)


def test_resume_refuses_an_input_edited_since(tagger, tmp_path, monkeypatch):
    texts = _corpus(80, seed=6)
    src = _write_jsonl(tmp_path / "c.jsonl", texts)
    out = tmp_path / "o.jsonl"
    _interrupt_after(monkeypatch, 40)
    with pytest.raises(TagInterrupted, match="after 39 lines.*--resume to continue"):
        tagger.tag_file(str(src), str(out), progress=False, commit_every=0.0)
    monkeypatch.undo()
    part = Path(f"{out}.part").read_bytes()
    st = src.stat()
    edited = src.read_bytes().replace(b'"d3"', b'"D3"')  # same size, earlier than the resume point
    src.write_bytes(edited)
    with pytest.raises(TagInputError, match="has changed since"):
        tagger.tag_file(str(src), str(out), progress=False, resume=True)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before: the bytes still differ
    with pytest.raises(TagInputError, match="not the input this output was started on"):
        tagger.tag_file(str(src), str(out), progress=False, resume=True)
    assert Path(f"{out}.part").read_bytes() == part and not out.exists()  # nothing damaged by the refusals
    src.write_bytes(edited.replace(b'"D3"', b'"d3"'))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    summary = tagger.tag_file(str(src), str(out), progress=False, resume=True)
    assert [r["id"] for r in _read(out)] == [f"d{i}" for i in range(80)]
    assert summary["lines"] == 80 and summary["this_run"]["lines"] == 41 and summary["resumed_lines"] == 39


def test_resume_gzip_and_stdin_check_the_bytes_before_the_resume_point(tagger, tmp_path, monkeypatch):
    texts = _corpus(60, seed=7)
    body = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()
    src = tmp_path / "c.jsonl.gz"
    src.write_bytes(gzip.compress(body, mtime=0))
    clean = tmp_path / "clean.jsonl"
    tagger.tag_file(str(src), str(clean), progress=False)
    out = tmp_path / "o.jsonl"
    _interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        tagger.tag_file(str(src), str(out), progress=False, commit_every=0.0)
    monkeypatch.undo()
    st = src.stat()
    src.write_bytes(gzip.compress(body.replace(b'"id": 3,', b'"id": 4,'), mtime=0))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    if src.stat().st_size == st.st_size:
        with pytest.raises(TagInputError, match="its lines before the resume point differ"):
            tagger.tag_file(str(src), str(out), progress=False, resume=True)
    src.write_bytes(gzip.compress(body, mtime=0))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    tagger.tag_file(str(src), str(out), progress=False, resume=True)
    assert [r["id"] for r in _read(out)] == [r["id"] for r in _read(clean)]

    # stdin: the same stream resumes; another one is refused
    out2 = tmp_path / "o2.jsonl"
    _interrupt_after(monkeypatch, 30)
    monkeypatch.setattr(sys, "stdin", _Stdin(body))
    with pytest.raises(KeyboardInterrupt):
        tagger.tag_file("-", str(out2), progress=False, commit_every=0.0)
    monkeypatch.undo()
    with pytest.raises(TagInputError, match="--resume-stdin"):
        tagger.tag_file("-", str(out2), progress=False, resume=True)
    monkeypatch.setattr(sys, "stdin", _Stdin(body.replace(b'"id": 5,', b'"id": 6,')))
    with pytest.raises(TagInputError, match="stdin is not the input"):
        tagger.tag_file("-", str(out2), progress=False, resume=True, resume_stdin=True)
    monkeypatch.setattr(sys, "stdin", _Stdin(body[:200]))
    with pytest.raises(TagInputError, match="before the resume point"):
        tagger.tag_file("-", str(out2), progress=False, resume=True, resume_stdin=True)
    monkeypatch.setattr(sys, "stdin", _Stdin(body))
    tagger.tag_file("-", str(out2), progress=False, resume=True, resume_stdin=True)
    assert [r["id"] for r in _read(out2)] == [r["id"] for r in _read(clean)]


class _Stdin:
    def __init__(self, data: bytes):
        import io

        self.buffer = io.BytesIO(data)


def test_gzip_output_is_gzip_and_resumes_to_a_clean_run(tagger, tmp_path, monkeypatch):
    src = _write_jsonl(tmp_path / "c.jsonl", _corpus(90, seed=8))
    clean = tmp_path / "clean.jsonl"
    tagger.tag_file(str(src), str(clean), progress=False)
    out = tmp_path / "o.jsonl.gz"
    _interrupt_after(monkeypatch, 50)
    with pytest.raises(KeyboardInterrupt):
        tagger.tag_file(str(src), str(out), progress=False, commit_every=0.0)
    monkeypatch.undo()
    with open(f"{out}.part", "ab") as f:
        f.write(b"\x1f\x8b torn")  # a member cut short by a kill
    tagger.tag_file(str(src), str(out), progress=False, resume=True)
    got = [json.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in _read(clean)]
    assert [[(e["label"], e["start"]) for e in r["entities"]] for r in got] == \
        [[(e["label"], e["start"]) for e in r["entities"]] for r in _read(clean)]


def test_two_writers_never_share_an_output(tmp_path):
    out = str(tmp_path / "o.jsonl")
    first = OutputWriter(out, {"k": 1})
    with pytest.raises(TagInputError, match="another flaxner tag is writing it"):
        OutputWriter(out, {"k": 1}, resume=True)
    first.write(b"{}\n")
    first.commit(2, 3)
    first.close()
    second = OutputWriter(out, {"k": 1}, resume=True)  # the lock went with the first
    assert second.resume_point == (2, 3)
    second.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


# ---- interrupts and the summary ------------------------------------------------------------------------------------

def test_sigint_is_one_line_with_the_resume_hint(tiny_ner_dir, tmp_path, monkeypatch):
    src = _write_jsonl(tmp_path / "c.jsonl", _corpus(50, seed=10))
    out = tmp_path / "o.jsonl"
    common = ["--model", tiny_ner_dir, "--no-progress", "--max-length", "64", "--stride", "16"]
    rc, err = _tag(src, "-o", tmp_path / "clean.jsonl", *common)
    assert rc == 0
    _interrupt_after(monkeypatch, 20)
    rc, err = _tag(src, "-o", out, *common)
    monkeypatch.undo()
    assert rc == 130 and err.strip() == (f"flaxner tag: interrupted by SIGINT after 19 lines, written and committed "
                                         f"to {out}.part; run the same command with --resume to continue")
    rc, err = _tag(src, "-o", out, "--resume", *common)
    assert rc == 0
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary["lines"] == 50 and summary["this_run"]["lines"] == 31 and summary["resumed_lines"] == 19
    assert summary["entities"] == sum(len(r["entities"]) for r in _read(tmp_path / "clean.jsonl"))
    assert [r["id"] for r in _read(out)] == [r["id"] for r in _read(tmp_path / "clean.jsonl")]


def test_progress_bar_shows_the_summary_figures(tagger, tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in SENTENCES) + "oops\n[1]\n")
    summary = tagger.tag_file(str(src), str(tmp_path / "o.jsonl"), progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{summary['docs_per_s']:.1f} docs/s" in final and f"{summary['errors']} errors" in final
    assert "100%" in final and "read ahead" not in final  # every line read was written
    assert summary["errors"] == 2


def test_progress_counts_the_lines_written_not_those_read_ahead(capsys):
    """The bar's position is the input bytes through the last line written; the lines read into the look-ahead
    but not written yet show as "read ahead"."""
    from types import SimpleNamespace

    from flaxner.tagging.writing import Progress

    reader = SimpleNamespace(total_bytes=100, bytes_read=0)
    lines = [Line(i, b"123456789", 10 * i) for i in range(1, 11)]

    def read():
        for line in lines:
            reader.bytes_read = line.offset
            yield line

    counts = {"lines": 0, "errors": 0}
    with Progress(reader, SimpleNamespace(tokens=0), counts, enabled=True) as bar:
        ahead = bar.track(read())
        for _ in range(7):  # the look-ahead holds 7 lines, 3 of them written
            next(ahead)
        counts["lines"] = 3
        bar.tick(3, seconds=1.0)
        assert bar.bar.n == 30 and "4 read ahead" in bar.bar.postfix
        counts["lines"] = 7
        bar.tick(7, seconds=2.0)
        assert bar.bar.n == 70 and "read ahead" not in bar.bar.postfix
    assert "70.0/100" in capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]


# ---- the Python API -----------------------------------------------------------------------------------------------

def test_tag_takes_a_str_as_one_text(tagger):
    one = tagger.tag(SENTENCES[3])
    assert isinstance(one, list) and one == tagger.tag([SENTENCES[3]])[0]
    assert all(isinstance(e, dict) for e in one)


def test_tag_replaces_lone_surrogates_as_the_cli_does(tagger):
    text = "Peter \udc80 Blackburn in BRUSSELS"
    (got,) = tagger.tag([text])
    assert got is not None and got == tagger.tag([text.replace("\udc80", "\ufffd")])[0]


def test_callable_gives_an_error_column_for_missing_texts(tagger):
    import numpy as np

    batch = {"text": np.array([SENTENCES[0], None, 7, SENTENCES[2]], dtype=object), "n": np.arange(4)}
    out = tagger(batch)
    assert list(out["error"]) == [None, "field 'text' is a NoneType, not a string",
                                  "field 'text' is a int, not a string", None]
    assert out["entities"][1] is None and out["entities"][2] is None
    assert list(out["entities"][[0, 3]]) == tagger.tag([SENTENCES[0], SENTENCES[2]])
    out = tagger({"body": np.array(["x"], dtype=object)})
    assert list(out["error"]) == ["field 'text' is missing"]


# ---- --processes: the parent ---------------------------------------------------------------------------------------

STUB = """
import sys, json
import flaxner.tagging.processes as tp
def child_command(args, child_args, out, shard):
    code = ("import sys, json; i, n = map(int, sys.argv[2].split('/')); "
            "open(sys.argv[1], 'w').write(json.dumps({'shard': i}) + '\\\\n'); "
            "print(json.dumps({'summary': {'lines': 1}}), file=sys.stderr)")
    return [sys.executable, "-c", code, str(out), shard]
tp.child_command = child_command
from flaxner.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "jax": "jax" in sys.modules, "flaxner.tagging.tagger": "flaxner.tagging.tagger" in sys.modules}))
"""


def test_processes_parent_imports_no_jax(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", STUB, "tag", str(src), "--model", str(tmp_path), "-o",
                          str(tmp_path / "o.jsonl"), "--processes", "3"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert json.loads(run.stdout.splitlines()[-1]) == {"rc": 0, "jax": False, "flaxner.tagging.tagger": False}, run.stderr
    assert _read(tmp_path / "o.jsonl") == [{"shard": 0}, {"shard": 1}, {"shard": 2}]


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _wait_gone(pids: list[int], timeout: float = 60) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in (Path(f"/proc/{p}/stat").read_text().split()[2:3] or [""])
                   for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def clean_run(tiny_ner_dir, tmp_path_factory) -> dict:
    """A 3000-line corpus and its uninterrupted `flaxner tag` output's ids (one process)."""
    d = tmp_path_factory.mktemp("clean")
    src = _write_jsonl(d / "c.jsonl", _corpus(3000, seed=11))
    common = ["--model", str(tiny_ner_dir), "--no-progress", "--max-length", "64", "--stride", "16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flaxner.cli", "tag", str(src), *common]
    clean = subprocess.run(cmd + ["-o", str(d / "clean.jsonl")], env=env, capture_output=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    return {"src": src, "common": common, "ids": [r["id"] for r in _read(d / "clean.jsonl")]}


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_processes_parent_killed_children_stop_and_resume_is_clean(clean_run, tmp_path, sig):
    """TERM to the parent: passed on, every child commits, exit 143 with one line. KILL to the parent: the children
    get SIGTERM from the kernel (PDEATHSIG) and commit. Either way --resume then gives the clean run's output."""
    import shutil
    import signal
    import time

    src = Path(shutil.copy(clean_run["src"], tmp_path / "c.jsonl"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flaxner.cli", "tag", str(src), *clean_run["common"]]
    out = tmp_path / "o.jsonl"
    # Commits every 0.1 s, and the signal goes as soon as a child has committed part of its shard: its 1,500 lines
    # take seconds, while the two children's start-up (JAX, the model, compiles) can differ by more than a shard's
    # tagging time, so the other child may not have started tagging yet, or may have finished its shard already.
    parent = subprocess.Popen(cmd + ["-o", str(out), "--processes", "2", "--commit-every", "0.1"], env=env,
                              stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 300
    while not any(Path(f"{out}.shard{k}of2.part.json").exists() for k in range(2)):  # a child is mid-shard
        assert parent.poll() is None, f"the run ended (rc {parent.returncode}) before a child committed"
        assert time.monotonic() < end, "no commit from a child in 300 s"
        time.sleep(0.02)
    children = _children_of(parent.pid)
    assert 1 <= len(children) <= 2
    parent.send_signal(getattr(signal, f"SIG{sig}"))
    err = parent.communicate(timeout=120)[1]
    assert _wait_gone(children), "children outlived their parent"
    if sig == "TERM":
        assert parent.returncode == 143 and "interrupted by SIGTERM" in err and "--resume" in err
        _no_traceback(err)
    rerun = subprocess.run(cmd + ["-o", str(out), "--processes", "2", "--resume"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert [r["id"] for r in _read(out)] == clean_run["ids"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "o.jsonl"]


@pytest.mark.slow
def test_second_processes_run_on_the_same_output_is_refused(tiny_ner_dir, tmp_path):
    import time

    src = _write_jsonl(tmp_path / "c.jsonl", _corpus(2000, seed=12))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flaxner.cli", "tag", str(src), "--model", str(tiny_ner_dir), "--no-progress",
           "-o", str(tmp_path / "o.jsonl"), "--processes", "2"]
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "another flaxner tag is writing it" in second.stderr
    assert second.stderr.count("\n") == 1
    first.communicate(timeout=600)
    assert first.returncode == 0 and len(_read(tmp_path / "o.jsonl")) == 2000


def test_a_corpus_whose_text_is_under_another_key_says_so_once_and_fails(tmp_path, tiny_ner_dir):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "content": "Peter Blackburn"}) + "\n" for i in range(5)) +
                   json.dumps({"text": "EU rejects"}) + "\n", encoding="utf-8")
    rc, err = _tag(inp, "--model", tiny_ner_dir, "-o", tmp_path / "out.jsonl", "--no-progress")
    assert rc == 1
    assert "5 of 6 lines have no 'text' field (keys seen: 'id', 'content'); name the text's key with --text-field" \
        in err
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 6  # every line still has its output line
    rc, _ = _tag(inp, "--model", tiny_ner_dir, "-o", tmp_path / "out2.jsonl", "--text-field", "content",
                 "--no-progress")
    assert rc == 0  # one line without `content` is an error record, not a wrong corpus


@pytest.mark.parametrize("opt", [["--processes", str(10 ** 21)], ["--shard", f"5/{10 ** 21}"]])
def test_huge_part_counts_are_refused_at_once(tmp_path, tiny_ner_dir, opt):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "EU rejects"}) + "\n", encoding="utf-8")
    rc, err = _tag(inp, "--model", tiny_ner_dir, "-o", tmp_path / "out.jsonl", *opt)
    assert rc == 2 and "4096" in err and not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_processes_say_once_that_the_text_is_under_another_key(tmp_path, tiny_ner_dir):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "content": "Peter Blackburn"}) + "\n" for i in range(40)),
                   encoding="utf-8")
    rc, err = _tag(inp, "--model", tiny_ner_dir, "-o", tmp_path / "out.jsonl", "--no-progress", "--processes", "2")
    assert rc == 1 and "failed" not in err
    assert "40 of" not in err and "have no 'text' field (keys seen: 'id', 'content')" in err  # one shard's count
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 40  # joined, every line kept


def test_resume_refuses_other_rows_than_the_output_was_started_with(tagger, tiny_ner_dir, tmp_path, monkeypatch):
    """Context and segment length change what each row sees: a resume under other values would mix two outputs."""
    from flaxner.tagging.tagger import Tagger

    src = _write_jsonl(tmp_path / "c.jsonl", _corpus(30, seed=2))
    out = tmp_path / "o.jsonl"
    _interrupt_after(monkeypatch, 10)
    with pytest.raises(TagInterrupted):
        tagger.tag_file(str(src), str(out), progress=False, commit_every=0.0)
    monkeypatch.undo()
    for change in ({"segment_length": 12}, {"context": "neighbours", "context_size": 4}):
        other = Tagger.from_pretrained(tiny_ner_dir, tagger.cfg, **change)
        with pytest.raises(ValueError, match="--resume: .* was written for"):
            other.tag_file(str(src), str(out), progress=False, resume=True)
    assert tagger.tag_file(str(src), str(out), progress=False, resume=True)["lines"] == 30


def test_resume_keeps_the_cuts_into_sentences_the_output_was_started_with(tiny_ner_dir, tmp_path, monkeypatch):
    """A run with learnt sentence starts: other `sentence_thresholds` are other rows; one cut at the model's own
    threshold is the key outputs had before the option, so they resume with `--sentence-thresholds 0.5`."""
    import shutil

    from helpers import tag_config

    import flaxner.tagging.filejob as filejob
    from flaxner.data.sentences import FILE, SentenceModel
    from flaxner.tagging.tagger import Tagger

    run = tmp_path / "run"
    shutil.copytree(tiny_ner_dir, run)
    SentenceModel([], {}, bias=0.0).save(run / FILE)
    src = _write_jsonl(tmp_path / "c.jsonl", _corpus(30, seed=3))
    out = tmp_path / "o.jsonl"
    one = Tagger.from_pretrained(run, tag_config(context="none", sentence_thresholds=(0.5,)))
    keys: list = []
    real = filejob.OutputWriter
    monkeypatch.setattr(filejob, "OutputWriter", lambda output, key, *a, **kw: keys.append(key) or real(output, key,
                                                                                                    *a, **kw))
    _interrupt_after(monkeypatch, 10)
    with pytest.raises(TagInterrupted):
        one.tag_file(str(src), str(out), progress=False, commit_every=0.0)
    monkeypatch.undo()
    assert "sentences" in keys[0] and "sentence_thresholds" not in keys[0]  # one cut: the key outputs had before
    five = Tagger.from_pretrained(run, tag_config(context="none"))
    assert five.cfg.sentence_thresholds == (0.1, 0.3, 0.5, 0.7, 0.9)
    with pytest.raises(ValueError, match="--resume: .* was written for"):
        five.tag_file(str(src), str(out), progress=False, resume=True)
    assert one.tag_file(str(src), str(out), progress=False, resume=True)["lines"] == 30
