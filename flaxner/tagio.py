"""Reading a corpus for tagging (JSONL or text, gzip or stdin, a shard of it, from a resume point) and writing the
entities through a temporary file, a resume sidecar and a final rename."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_CHUNK = 1 << 24
_SURROGATES = re.compile("[\ud800-\udfff]")


class TagInputError(ValueError):
    """A line that cannot be tagged, or an input that cannot be read as asked."""


@dataclass(slots=True)
class Line:
    """One input line: its 1-based number in the whole file and the input position just after it."""

    number: int
    raw: bytes
    offset: int  # byte offset after the line (plain files), or lines consumed in the shard (gzip, stdin)


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


def default_output(path: str) -> str:
    """corpus.jsonl(.gz) / corpus.txt -> corpus.entities.jsonl; stdin -> stdout."""
    if path == "-":
        return "-"
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    for suf in (".jsonl", ".json", ".ndjson", ".txt"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return str(p.with_name(name + ".entities.jsonl"))


def input_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = path[:-3] if path.endswith(".gz") else path
    return "txt" if name.endswith(".txt") else "jsonl"


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; None -> (0, 1)."""
    if not spec:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(m[1]), int(m[2])


class LineReader:
    """Lines of one shard of a file (plain: a byte range cut at line starts; gzip: a line range after a counting
    pass; stdin: everything), from an optional resume point. `bytes_read` and `total_bytes` drive the progress bar."""

    def __init__(self, path: str, shard: tuple[int, int] = (0, 1), resume: tuple[int, int] | None = None):
        self.path, self.shard = path, shard
        self.gz = path.endswith(".gz")
        self.stdin = path == "-"
        if not self.stdin and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such input file")
        if self.stdin and shard != (0, 1):
            raise ValueError("--shard needs a file, not stdin")
        self.resume = resume
        self.bytes_read = 0
        self.total_bytes = 0 if self.stdin else os.path.getsize(path)

    def _open_raw(self) -> BinaryIO:
        return sys.stdin.buffer if self.stdin else open(self.path, "rb")

    def __iter__(self) -> Iterator[Line]:
        if self.gz or self.stdin:
            yield from self._iter_stream()
        else:
            yield from self._iter_plain()

    def _iter_plain(self) -> Iterator[Line]:
        i, n = self.shard
        lo, hi = self.total_bytes * i // n, self.total_bytes * (i + 1) // n
        with open(self.path, "rb") as f:
            if lo > 0:
                f.seek(lo - 1)
                f.readline()  # the line straddling `lo` belongs to the previous shard
                lo = f.tell()
            number = _count_newlines(f, lo) + 1
            pos = lo
            if self.resume:
                number, pos = self.resume
            f.seek(pos)
            self.total_bytes = max(hi - lo, 0)
            self.bytes_read = pos - lo
            while pos < hi:
                raw = f.readline()
                if not raw:
                    break
                pos += len(raw)
                self.bytes_read = pos - lo
                yield Line(number, raw, pos)
                number += 1

    def _iter_stream(self) -> Iterator[Line]:
        i, n = self.shard
        first, stop = 0, None
        if n > 1:
            total = _count_gz_lines(self.path)
            first, stop = total * i // n, total * (i + 1) // n
        skip = self.resume[1] if self.resume else 0
        raw_f = self._open_raw()
        try:
            counted = raw_f if not self.gz else _Counting(raw_f)
            f = gzip.GzipFile(fileobj=counted, mode="rb") if self.gz else raw_f
            f = io.BufferedReader(f, _CHUNK) if self.gz else f
            k = 0
            for raw in f:
                if stop is not None and k >= stop:
                    break
                k += 1
                if k <= first + skip:
                    continue
                self.bytes_read = counted.n if self.gz else self.bytes_read + len(raw)
                yield Line(k, raw, k - first)
        finally:
            if not self.stdin:
                raw_f.close()


class _Counting(io.RawIOBase):
    """A read-through file that counts the compressed bytes consumed (progress of a gzip input)."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        self.n += len(data)
        b[:len(data)] = data
        return len(data)


def _count_newlines(f: BinaryIO, upto: int) -> int:
    f.seek(0)
    count, left = 0, upto
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def _count_gz_lines(path: str) -> int:
    """Lines of a gzip file, a last line without a newline included."""
    count, last = 0, b""
    with gzip.open(path, "rb") as g:
        for chunk in iter(lambda: g.read(_CHUNK), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + int(bool(last) and last != b"\n")


def parse_line(line: Line, fmt: str, text_field: str = "text", id_field: str = "id") -> Record:
    """A raw line -> Record; never raises: every problem becomes the record's `error` (or `warning`)."""
    raw = line.raw.rstrip(b"\n").rstrip(b"\r") if line.raw.endswith(b"\n") else line.raw
    warning = None
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        s = raw.decode("utf-8", errors="replace")
        warning = f"line {line.number}: undecodable bytes replaced with U+FFFD (first at byte {e.start})"
    rec = Record(line.number, line.number, None, warning=warning, resume_at=line.offset)
    if fmt == "txt":
        rec.text = s
    else:
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            rec.error = f"line {line.number}: not JSON ({e.msg} at column {e.colno})"
            return rec
        if not isinstance(obj, dict):
            rec.error = f"line {line.number}: not a JSON object (got {type(obj).__name__})"
            return rec
        rec.fields = obj
        rec.id = obj.get(id_field, line.number)
        text = obj.get(text_field)
        if not isinstance(text, str):
            what = "missing" if text_field not in obj else f"a {type(text).__name__}, not a string"
            rec.error = f"line {line.number}: field {text_field!r} is {what}"
            return rec
        rec.text = text
    if _SURROGATES.search(rec.text):
        rec.text = _SURROGATES.sub("\ufffd", rec.text)  # one char for one: offsets stay valid
        rec.warning = rec.warning or f"line {line.number}: lone surrogates replaced with U+FFFD"
    return rec


def output_line(rec: Record, ents: list[dict] | None, keep_fields: bool = False) -> bytes:
    """The JSON line of one input line: id, entities (or error), warning, and the input fields if asked."""
    out: dict[str, Any] = dict(rec.fields) if keep_fields and rec.fields else {}
    out["id"] = rec.id
    if rec.error is not None:
        out["error"] = rec.error
    else:
        out["entities"] = ents
    if rec.warning:
        out["warning"] = rec.warning
    try:
        return (json.dumps(out, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in a kept field: ASCII escapes keep them representable
        return (json.dumps(out) + "\n").encode("ascii")


class OutputWriter:
    """Lines go to OUTPUT.part; `commit` makes them durable and records where the input resumes in
    OUTPUT.part.json; `finish` renames the part file to OUTPUT. Stdout ('-') is written straight through."""

    def __init__(self, path: str, key: dict, resume: bool = False):
        self.path, self.key = path, key
        self.stdout = path == "-"
        self.resume_point: tuple[int, int] | None = None
        self.lines_done = 0
        self.bytes = 0
        if self.stdout:
            if resume:
                raise ValueError("--resume needs an output file, not stdout")
            self.f = sys.stdout.buffer
            return
        self.part, self.sidecar = Path(path + ".part"), Path(path + ".part.json")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if resume and self.sidecar.is_file() and self.part.is_file():
            state = json.loads(self.sidecar.read_text())
            if state["key"] != key:
                raise ValueError(f"--resume: {self.sidecar} was written for {state['key']}, not {key}; "
                                 f"run without --resume to start over")
            self.f = open(self.part, "r+b")
            self.f.truncate(state["bytes"])
            self.f.seek(state["bytes"])
            self.resume_point = (state["next_line"], state["resume_at"])
            self.lines_done = state["lines"]
            self.bytes = state["bytes"]
        elif resume and Path(path).is_file() and not self.part.exists():
            raise ValueError(f"--resume: {path} is already complete")
        else:
            self.f = open(self.part, "wb")

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.lines_done += 1
        self.bytes += len(data)  # counted only once a whole line is written

    def commit(self, next_line: int, resume_at: int) -> None:
        """Make everything written so far durable and record the input position just after it."""
        if self.stdout:
            self.f.flush()
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        state = {"key": self.key, "bytes": self.bytes, "lines": self.lines_done,
                 "next_line": next_line, "resume_at": resume_at}
        tmp = self.sidecar.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.sidecar)

    def finish(self) -> None:
        if self.stdout:
            self.f.flush()
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.part, self.path)
        self.sidecar.unlink(missing_ok=True)

    def close(self) -> None:
        """Leave the part file and sidecar for --resume (after an error or an interrupt)."""
        if not self.stdout and not self.f.closed:
            self.f.close()


class Progress:
    """A progress bar by input bytes with documents/s, sub-word tokens/s and errors so far (tqdm's ETA)."""

    def __init__(self, reader: LineReader, stats: dict, counts: dict, enabled: bool = True):
        self.reader, self.stats, self.counts, self.enabled = reader, stats, counts, enabled
        self.bar = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.reader.total_bytes or None, unit="B", unit_scale=True, dynamic_ncols=True,
                            mininterval=1.0, file=sys.stderr, desc="tag")
        self.t0, self.last = time.monotonic(), 0.0
        self.lines0, self.tokens0 = self.counts["lines"], self.stats["tokens"]
        return self

    def tick(self) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        self.bar.n = self.reader.bytes_read
        self.bar.set_postfix_str(f"{(self.counts['lines'] - self.lines0) / dt:.0f} docs/s, "
                                 f"{(self.stats['tokens'] - self.tokens0) / dt:.0f} tok/s, "
                                 f"{self.counts['errors']} errors", refresh=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.n = self.reader.bytes_read
            self.bar.close()
