"""Reading a corpus for tagging: JSONL or text, gzip (through `gunzip`) or stdin, one shard or byte range of it, from
a resume point, each line parsed into a `Record` (`parse_line` never raises: a bad line becomes an error record).

Everything that turns input bytes into `Line`s and `Record`s is here, with what identifies an input to `--resume`
(size, mtime, CRCs), because a resume is checked while the input is read again; `writing` is the output half.
Every engine reads through it (Ray's slices too). It imports no JAX: `flaxner tag --processes`' parent
(`flaxner.tagging.processes`) uses it before any child starts JAX. `TagInputError` lives here because most of what
it reports is input; `writing` raises it too, for outputs."""

from __future__ import annotations

import codecs
import io
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from flaxner.tagging.gunzip import Gunzip, count_gz_lines
from flaxner.tagging.lines import DocumentEdges, document_key, document_start, line_start, newlines_between, \
    read_line

# Longest line read (bytes): a 1 MB document is ~250k sub-tokens, ~500 windows; past that a line's memory
# (its tokens, windows and probabilities at once) grows into gigabytes; 0 lifts the cap.
MAX_LINE_BYTES = 1_000_000
MAX_PARTS = 4096  # the most shards, processes or actors: past any machine's cores, small enough to plan at once
RESUME_STDIN = ("--resume from stdin: a pipe cannot be checked before it is read again; pass --resume-stdin to vouch "
                "that it gives the same lines (their CRC is then checked as they are skipped)")
_SURROGATES = re.compile("[\ud800-\udfff]")


class TagInputError(ValueError):
    """A line that cannot be tagged, or an input or output that cannot be used as asked."""


@dataclass(slots=True)
class Line:
    """One input line: its 1-based number in the whole file and the input position just after it."""

    number: int
    raw: bytes
    offset: int  # byte offset after the line (plain files), or lines consumed in the shard (gzip, stdin)
    error: str | None = None  # set by the reader: a line over the size cap, or the damaged end of a gzip input
    crc: int = 0  # CRC-32 of the shard's bytes up to the end of this line (gzip, stdin: checked by --resume)


@dataclass(slots=True)
class Record:
    """A parsed line: the text to tag, or the error that replaces its entities."""

    line: int
    id: Any
    text: str | None
    fields: dict | None = None
    error: str | None = None
    warning: str | None = None
    resume_at: int = 0
    crc: int = 0
    document: Any = None  # the --document-field's value (`lines.document_key`); None: the line stands alone
    doc_end: bool = True  # False while later lines of its document follow (the output commits after the last)


def input_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = path[:-3] if path.endswith(".gz") else path
    return "txt" if name.endswith(".txt") else "jsonl"


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N <= MAX_PARTS; None -> (0, 1)."""
    if not spec:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]) or int(m[2]) > MAX_PARTS:
        raise ValueError(f"--shard {spec!r}: expected I/N with 0 <= I < N <= {MAX_PARTS}, e.g. 0/4")
    return int(m[1]), int(m[2])


class LineReader:
    """Lines of one shard of a file (plain: a byte range cut at line starts; gzip: a line range after a counting
    pass; stdin: everything), from an optional resume point. `bytes_read` and `total_bytes` drive the progress bar.

    A line longer than `max_line_bytes` (0: no cap) is skipped in bounded reads and comes back with an `error`
    instead of its bytes. A damaged gzip input ends with one Line carrying the error (`damage` says what). `expect`
    is the resume sidecar's record of the input (`identity`): a different input is refused."""

    def __init__(self, path: str, shard: tuple[int, int] = (0, 1), resume: tuple[int, int] | None = None,
                 max_line_bytes: int = 0, expect: dict | None = None, opener: Callable[[], BinaryIO] | None = None,
                 document_field: str = ""):
        self.path, self.shard, self.cap, self.document_field = path, shard, max_line_bytes, document_field
        self.gz = path.endswith(".gz")
        self.stdin = path == "-"
        self.opener = opener  # how to open `path` where it is no local file (a URI: Ray's reader)
        if not self.stdin and opener is None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such input file")
        if self.stdin and shard != (0, 1):
            raise ValueError("--shard needs a file, not stdin")
        self.resume = resume
        self.expect = expect
        self.damage: str | None = None
        self.bytes_read = 0
        self.total_bytes = 0 if self.stdin or opener is not None else os.path.getsize(path)
        self._lo = 0  # the shard's first byte (plain files)
        if expect is not None and not self.stdin:
            now = file_stat(path)
            if {k: expect.get(k) for k in now} != now:
                raise TagInputError(f"--resume: {path} has changed since this output was started (size/mtime "
                                    f"{expect.get('size')}/{expect.get('mtime_ns')}, now {now['size']}/"
                                    f"{now['mtime_ns']}); run with --overwrite to start over")

    def _open_raw(self) -> BinaryIO:
        if self.opener is not None:
            return self.opener()
        return sys.stdin.buffer if self.stdin else open(self.path, "rb")

    def __iter__(self) -> Iterator[Line]:
        if self.gz or self.stdin:
            yield from self._iter_stream()
        else:
            yield from self._iter_plain()

    def identity(self, rec: Record) -> dict:
        """What --resume checks of the input at `rec` (the last line committed): size, mtime and, for a plain
        file, a CRC of the 64 KiB at the shard's start and before the resume point (two reads, cheap on any size);
        for gzip and stdin the CRC of every byte up to it, which the resumed reader recomputes while it skips."""
        out = {} if self.stdin else file_stat(self.path)
        if self.gz or self.stdin:
            out["crc"] = rec.crc
        else:
            out["sample"] = _sample_crc(self.path, self._lo, rec.resume_at)
        return out

    def _refuse(self, what: str) -> None:
        name = "stdin" if self.stdin else self.path
        raise TagInputError(f"--resume: {name} is not the input this output was started on ({what}); "
                            f"run with --overwrite to start over")

    def _iter_plain(self) -> Iterator[Line]:
        i, n = self.shard
        lo, hi = self.total_bytes * i // n, self.total_bytes * (i + 1) // n
        with self._open_raw() as f:
            lo, _ = self._document_start(f, line_start(f, lo))
            hi, _ = self._document_start(f, line_start(f, hi))
            self._lo = lo
            number = newlines_between(f, 0, lo) + 1
            pos = lo
            if self.resume:
                number, pos = self.resume
                if self.expect is not None and self.expect.get("sample") != _sample_crc(self.path, lo, pos):
                    self._refuse("its bytes before the resume point differ")
            yield from self._lines(f, lo, pos, hi, number)

    def iter_range(self, lo: int, hi: int, first_line: int) -> Iterator[Line]:
        """The lines of a plain file that start in bytes [lo, hi), numbered from `first_line` (a Ray slice's, counted
        beforehand), capped and read as a shard's are."""
        with self._open_raw() as f:
            lo, skipped = self._document_start(f, line_start(f, lo))
            hi, _ = self._document_start(f, line_start(f, hi))
            self._lo = lo
            yield from self._lines(f, lo, lo, hi, first_line + skipped)

    def _document_start(self, f: BinaryIO, p: int) -> tuple[int, int]:
        """`p` moved past the lines that continue the document before it (`--document-field`), and how many."""
        if not self.document_field:
            return p, 0
        f.seek(0, os.SEEK_END)
        return document_start(f, p, f.tell(), self.document_field, self.cap)

    def _lines(self, f: BinaryIO, lo: int, pos: int, hi: int, number: int) -> Iterator[Line]:
        """The lines from `pos` (numbered from `number`) while they start before `hi`; `lo`: the range's start."""
        f.seek(pos)
        self.total_bytes = max(hi - lo, 0)
        self.bytes_read = pos - lo
        while pos < hi:
            raw, size = read_line(f, self.cap)
            if not size:
                break
            pos += size
            self.bytes_read = pos - lo
            yield Line(number, raw or b"", pos, None if raw is not None else self._too_long(number, size))
            number += 1

    def _too_long(self, number: int, size: int) -> str:
        return (f"line {number}: {size:,} bytes, over the --max-line-bytes cap of {self.cap:,}; not read "
                f"(raise the cap to tag it)")

    def _iter_stream(self) -> Iterator[Line]:
        i, n = self.shard
        first, stop, mark = 0, None, None
        if n > 1:
            total, damaged, marks = count_gz_lines(self.path)
            first, stop = total * i // n, total * (i + 1) // n
            if damaged and i == n - 1:
                stop = None  # the last shard reads on to the damage and reports it
            seen = first - (first > 0 and bool(self.document_field))  # --document-field: line `first` is read too
            mark = max((m for m in marks if m.lines_passed <= seen), key=lambda m: m.lines_passed)
        skip = self.resume[1] if self.resume else 0
        raw_f = self._open_raw()
        k, crc, last = 0, 0, None
        edges = DocumentEdges(self.document_field) if self.document_field and n > 1 else None
        try:
            gz = Gunzip(raw_f, mark) if self.gz else None
            if mark is not None:
                k = mark.lines_passed
                if not mark.at_line_start:
                    gz.skip_line()
            f = io.BufferedReader(gz, 1 << 20) if self.gz else raw_f
            while stop is None or k < stop or edges:
                try:
                    raw, size = read_line(f, self.cap)
                except (EOFError, zlib.error) as e:  # a truncated or corrupt gzip stream
                    if k < first + skip:
                        self._refuse(f"it is damaged at line {k + 1}, before the resume point")
                    self.damage = (f"{self.path}: damaged after line {k} ({type(e).__name__}: {e}); "
                                   f"the lines after it are lost")
                    yield Line(k + 1, b"", k + 1 - first, f"line {k + 1}: {self.damage}", crc)
                    return
                if not size:
                    break
                k += 1
                if stop is not None and k > stop and not (edges and edges.continues(last, raw)):
                    break  # the shard's end (a document it holds runs on past `stop` with --document-field)
                if k <= first or edges and edges.skip_head(raw):
                    if edges and k == first:
                        edges.seen_before(raw)
                    first += k > first  # a line of the shard before's document: its, so this shard starts later
                    continue
                last = raw
                if raw is not None:
                    crc = zlib.crc32(raw, crc)
                if k <= first + skip:
                    if k == first + skip and self.expect is not None and self.expect.get("crc") != crc:
                        self._refuse("its lines before the resume point differ")
                    continue
                self.bytes_read = gz.n if self.gz else self.bytes_read + size
                yield Line(k, raw or b"", k - first, None if raw is not None else self._too_long(k, size), crc)
            if skip and k < first + skip:
                self._refuse(f"it ends at line {k}, before the resume point")
        finally:
            if not self.stdin:
                raw_f.close()


def file_stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sample_crc(path: str, lo: int, pos: int, size: int = 1 << 16) -> int:
    with open(path, "rb") as f:
        f.seek(lo)
        crc = zlib.crc32(f.read(min(size, max(pos - lo, 0))))
        f.seek(max(lo, pos - size))
        return zlib.crc32(f.read(pos - max(lo, pos - size)), crc)


def clean_text(text: str) -> tuple[str, bool]:
    """Lone surrogates (which no tokenizer takes) -> U+FFFD, one char for one so offsets stay valid."""
    if _SURROGATES.search(text):
        return _SURROGATES.sub("\ufffd", text), True
    return text, False


def parse_line(line: Line, fmt: str, text_field: str = "text", id_field: str = "id",
               max_line_bytes: int = 0, document_field: str = "") -> Record:
    """A raw line -> Record; never raises: every problem becomes the record's `error` (or `warning`).
    `document_field`: the JSON field whose value makes consecutive lines one document (`Record.document`)."""
    rec = Record(line.number, line.number, None, resume_at=line.offset, crc=line.crc)
    if line.error is not None:
        rec.error = line.error
        return rec
    if max_line_bytes and len(line.raw.rstrip(b"\r\n")) > max_line_bytes:
        rec.error = (f"line {line.number}: {len(line.raw):,} bytes, over the --max-line-bytes cap of "
                     f"{max_line_bytes:,}; not read (raise the cap to tag it)")
        return rec
    try:
        _parse(line, rec, fmt, text_field, id_field)
    except Exception as e:  # noqa: BLE001 (RecursionError, int digit limits, ...): one line fails, never the run
        rec.error = f"line {line.number}: cannot be read ({type(e).__name__}: {e})"
        rec.text = rec.fields = None
    if document_field and rec.fields is not None:
        rec.document = document_key(rec.fields.get(document_field))
    return rec


def _parse(line: Line, rec: Record, fmt: str, text_field: str, id_field: str) -> None:
    raw = line.raw.rstrip(b"\n").rstrip(b"\r") if line.raw.endswith(b"\n") else line.raw
    if line.number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    warnings = []
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        s = raw.decode("utf-8", errors="replace")
        warnings.append(f"undecodable bytes replaced with U+FFFD (first at byte {e.start})")
    if fmt == "txt" or not s.strip():  # a blank JSONL line is an empty document, as in a text file
        rec.text = s if fmt == "txt" else ""
    else:
        nonfinite: list[str] = []

        def null(value: str):
            nonfinite.append(value)

        def number(value: str):
            x = float(value)
            return x if math.isfinite(x) else null(value)

        try:
            obj = json.loads(s, parse_constant=null, parse_float=number)
        except json.JSONDecodeError as e:
            rec.error = f"line {line.number}: not JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
            return
        if not isinstance(obj, dict):
            rec.error = f"line {line.number}: not a JSON object (got {type(obj).__name__})"
            return
        if nonfinite:
            warnings.append(f"{', '.join(sorted(set(nonfinite)))} (not JSON numbers) read as null")
        rec.fields = obj
        rec.id = obj.get(id_field, line.number)
        text = obj.get(text_field)
        if not isinstance(text, str):
            what = "missing" if text_field not in obj else f"a {type(text).__name__}, not a string"
            rec.error = f"line {line.number}: field {text_field!r} is {what}"
            return
        rec.text = text
    rec.text, replaced = clean_text(rec.text)
    if replaced:
        warnings.append("lone surrogates replaced with U+FFFD")
    if warnings:
        rec.warning = f"line {line.number}: " + "; ".join(warnings)
