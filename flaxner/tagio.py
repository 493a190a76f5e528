"""Reading a corpus for tagging (JSONL or text, gzip or stdin, a shard of it, from a resume point) and writing the
entities through a temporary file, a resume sidecar and a final rename."""

from __future__ import annotations

import codecs
import fcntl
import io
import json
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_CHUNK = 1 << 24
# Longest line read (bytes): a 1 MB document is ~250k sub-tokens, ~500 windows; past that a line's memory
# (its tokens, windows and probabilities at once) grows into gigabytes; 0 lifts the cap.
MAX_LINE_BYTES = 1_000_000
RESUME_STDIN = ("--resume from stdin: a pipe cannot be checked before it is read again; pass --resume-stdin to vouch "
                "that it gives the same lines (their CRC is then checked as they are skipped)")
_SURROGATES = re.compile("[\ud800-\udfff]")


class TagInputError(ValueError):
    """A line that cannot be tagged, or an input or output that cannot be used as asked."""


class TagInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during `tag_file`: what was written is committed (the message says how to continue)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


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
    pass; stdin: everything), from an optional resume point. `bytes_read` and `total_bytes` drive the progress bar.

    A line longer than `max_line_bytes` (0: no cap) is skipped in bounded reads and comes back with an `error`
    instead of its bytes. A damaged gzip input ends with one Line carrying the error (`damage` says what). `expect`
    is the resume sidecar's record of the input (`identity`): a different input is refused."""

    def __init__(self, path: str, shard: tuple[int, int] = (0, 1), resume: tuple[int, int] | None = None,
                 max_line_bytes: int = 0, expect: dict | None = None):
        self.path, self.shard, self.cap = path, shard, max_line_bytes
        self.gz = path.endswith(".gz")
        self.stdin = path == "-"
        if not self.stdin and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such input file")
        if self.stdin and shard != (0, 1):
            raise ValueError("--shard needs a file, not stdin")
        self.resume = resume
        self.expect = expect
        self.damage: str | None = None
        self.bytes_read = 0
        self.total_bytes = 0 if self.stdin else os.path.getsize(path)
        self._lo = 0  # the shard's first byte (plain files)
        if expect is not None and not self.stdin:
            now = file_stat(path)
            if {k: expect.get(k) for k in now} != now:
                raise TagInputError(f"--resume: {path} has changed since this output was started (size/mtime "
                                    f"{expect.get('size')}/{expect.get('mtime_ns')}, now {now['size']}/"
                                    f"{now['mtime_ns']}); run with --overwrite to start over")

    def _open_raw(self) -> BinaryIO:
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
        with open(self.path, "rb") as f:
            if lo > 0:
                f.seek(lo - 1)
                f.readline()  # the line straddling `lo` belongs to the previous shard
                lo = f.tell()
            self._lo = lo
            number = newlines_between(f, 0, lo) + 1
            pos = lo
            if self.resume:
                number, pos = self.resume
                if self.expect is not None and self.expect.get("sample") != _sample_crc(self.path, lo, pos):
                    self._refuse("its bytes before the resume point differ")
            f.seek(pos)
            self.total_bytes = max(hi - lo, 0)
            self.bytes_read = pos - lo
            while pos < hi:
                raw, size = _read_line(f, self.cap)
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
            total, damaged, marks = _count_gz_lines(self.path)
            first, stop = total * i // n, total * (i + 1) // n
            if damaged and i == n - 1:
                stop = None  # the last shard reads on to the damage and reports it
            mark = max((m for m in marks if m.lines_passed <= first), key=lambda m: m.lines_passed)
        skip = self.resume[1] if self.resume else 0
        raw_f = self._open_raw()
        k, crc = 0, 0
        try:
            gz = _Gunzip(raw_f, mark) if self.gz else None
            if mark is not None:
                k = mark.lines_passed
                if not mark.at_line_start:
                    gz.skip_line()
            f = io.BufferedReader(gz, 1 << 20) if self.gz else raw_f
            while stop is None or k < stop:
                try:
                    raw, size = _read_line(f, self.cap)
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
                if k <= first:
                    continue
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


@dataclass
class _Mark:
    """A saved point of a gzip stream: where its compressed bytes resume, the decompressor's state there, and the
    lines before that point."""

    offset: int
    state: Any
    lines_before: int
    at_line_start: bool

    @property
    def lines_passed(self) -> int:
        """Lines wholly before the point once the line it falls in (if any) is skipped."""
        return self.lines_before + (not self.at_line_start)


class _Gunzip(io.RawIOBase):
    """The decompressed bytes of a gzip file (members one after another) through zlib. Unlike gzip.GzipFile, the
    bytes decompressed before a truncation or corruption are returned before the error is raised; and it can start
    at a `_Mark`, so a shard decompresses what precedes its slice once, in the counting pass, not twice."""

    BLOCK = 1 << 16

    def __init__(self, f: BinaryIO, mark: _Mark | None = None):
        self.f, self.n = f, 0
        self.d = zlib.decompressobj(31)
        self.out = b""
        self.error: Exception | None = None
        self.done = False
        if mark is not None and mark.offset:
            f.seek(mark.offset)
            self.n, self.d = mark.offset, mark.state.copy()

    def readable(self) -> bool:
        return True

    def mark(self, lines_before: int, at_line_start: bool) -> _Mark:
        return _Mark(self.n, self.d.copy(), lines_before, at_line_start)

    def fill(self) -> bytes:
        """The next decompressed block (b"" at the end); an error only once the bytes before it are out."""
        while not self.out and not self.done:
            data = self.f.read(self.BLOCK)
            if not data:
                self.done = True
                if self.n and not self.d.eof:
                    self.error = EOFError("compressed file ended before the end-of-stream marker was reached")
                break
            self.n += len(data)
            try:
                if self.d.eof:
                    self.d = zlib.decompressobj(31)
                out = self.d.decompress(data)
                while self.d.eof and self.d.unused_data:  # the next member
                    rest, self.d = self.d.unused_data, zlib.decompressobj(31)
                    out += self.d.decompress(rest)
                self.out = out
            except zlib.error as e:
                self.error, self.done = e, True
        out, self.out = self.out, b""
        if not out and self.error is not None:
            raise self.error
        return out

    def readinto(self, b) -> int:
        if not self.out:
            self.out = self.fill()
        k = min(len(b), len(self.out))
        b[:k] = self.out[:k]
        self.out = self.out[k:]
        return k

    def skip_line(self) -> None:
        """Read past the next line break (a `_Mark` taken mid-line)."""
        while True:
            if not self.out:
                self.out = self.fill()
                if not self.out:
                    return
            j = self.out.find(b"\n")
            if j >= 0:
                self.out = self.out[j + 1:]
                return
            self.out = b""


def file_stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sample_crc(path: str, lo: int, pos: int, size: int = 1 << 16) -> int:
    with open(path, "rb") as f:
        f.seek(lo)
        crc = zlib.crc32(f.read(min(size, max(pos - lo, 0))))
        f.seek(max(lo, pos - size))
        return zlib.crc32(f.read(pos - max(lo, pos - size)), crc)


def _read_line(f: BinaryIO, cap: int) -> tuple[bytes | None, int]:
    """(line, its size in bytes); a line over `cap` bytes (its line break not counted) is skipped in bounded reads
    and comes back as (None, size), so memory stays flat whatever its length."""
    if not cap:
        raw = f.readline()
        return raw, len(raw)
    raw = f.readline(cap + 2)
    if len(raw) <= cap or raw.endswith(b"\n") and len(raw.rstrip(b"\r\n")) <= cap:
        return raw, len(raw)
    size = len(raw)
    while not raw.endswith(b"\n"):
        raw = f.readline(1 << 20)
        if not raw:
            break
        size += len(raw)
    return None, size


def newlines_between(f: BinaryIO, lo: int, hi: int) -> int:
    """Newlines in bytes [lo, hi) of a seekable binary file (read in chunks; the file is left past them)."""
    f.seek(lo)
    count, left = 0, hi - lo
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def _count_gz_lines(path: str, spacing: int = 1 << 26, most: int = 256) -> tuple[int, bool, list[_Mark]]:
    """Lines of a gzip file (a last line without a newline included), whether it ends damaged, and marks every
    `spacing` decompressed bytes (at most `most`: past that every other one goes, and the spacing doubles)."""
    count, last, damaged, pos, next_mark = 0, b"\n", False, 0, spacing
    with open(path, "rb") as f:
        g = _Gunzip(f)
        marks = [g.mark(0, True)]
        while True:
            if pos >= next_mark and not g.d.eof:
                if len(marks) >= most:
                    marks, spacing = marks[::2], spacing * 2  # marks[0], the start, stays
                marks.append(g.mark(count, last == b"\n"))
                next_mark = pos + spacing
            try:
                chunk = g.fill()
            except (EOFError, zlib.error):
                damaged = True
                break
            if not chunk:
                break
            count += chunk.count(b"\n")
            pos += len(chunk)
            last = chunk[-1:]
    return count + int(last != b"\n"), damaged, marks


def clean_text(text: str) -> tuple[str, bool]:
    """Lone surrogates (which no tokenizer takes) -> U+FFFD, one char for one so offsets stay valid."""
    if _SURROGATES.search(text):
        return _SURROGATES.sub("\ufffd", text), True
    return text, False


def parse_line(line: Line, fmt: str, text_field: str = "text", id_field: str = "id",
               max_line_bytes: int = 0) -> Record:
    """A raw line -> Record; never raises: every problem becomes the record's `error` (or `warning`)."""
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


RESERVED = ("id", "entities", "error", "warning")


def output_line(rec: Record, ents: list[dict] | None, keep_fields: bool = False, id_field: str = "id") -> bytes:
    """The JSON line of one input line: id, entities (or error), warning, and the input fields if asked.

    flaxner's own keys win: a kept input field named id (unless it is the --id-field), entities, error or warning
    is written as input_<name> (input_input_<name> if that is taken too)."""
    out: dict[str, Any] = {}
    if keep_fields and rec.fields:
        for k, v in rec.fields.items():
            if k in RESERVED:
                if k == id_field:
                    continue  # it is the `id` written below
                k = "input_" + k
                while k in rec.fields or k in out:
                    k = "input_" + k
            out[k] = v
    out["id"] = rec.id
    if rec.error is not None:
        out["error"] = rec.error
    else:
        out["entities"] = ents
    if rec.warning:
        out["warning"] = rec.warning
    try:
        try:
            return (json.dumps(out, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates in a kept field: ASCII escapes keep them representable
            return (json.dumps(out, allow_nan=False) + "\n").encode("ascii")
    except (RecursionError, ValueError) as e:  # kept fields nested too deep to write: the line says so
        bad = Record(rec.line, rec.id if isinstance(rec.id, (str, int)) else rec.line, None,
                     error=f"line {rec.line}: its fields cannot be written ({type(e).__name__}: {e})")
        return output_line(bad, None)


def check_output(path: str, input_path: str, fresh: bool = False) -> None:
    """Refuse, before any work, an output that is a folder, that is (or whose part, sidecar or lock file is) the
    input file, or (`fresh`: neither --resume nor --overwrite) that exists."""
    if path == "-":
        return
    if Path(path).is_dir():
        raise TagInputError(f"-o {path}: is a folder; give the path of the file to write")
    if input_path != "-":
        src = Path(input_path).resolve()
        for p in (path, *(path + s for s in _AUX)):
            if Path(p).resolve() == src or (Path(p).exists() and os.path.samefile(p, src)):
                raise TagInputError(f"-o {path}: {p} is the input file {input_path}; choose another output")
    if fresh and Path(path).exists():
        raise TagInputError(f"{path} exists; pass --overwrite to replace it")


_AUX = (".part", ".part.json", ".part.tmp", ".part.lock")


class OutputLock:
    """An exclusive flock on PATH.part.lock for as long as one writer owns PATH (a second one is refused)."""

    def __init__(self, path: str):
        self.path = Path(path + ".part.lock")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TagInputError(f"{path}: another flaxner tag is writing it (it holds {self.path}); wait for "
                                    f"it to end or stop it first") from None
            try:  # the holder before us may have removed the file after we opened it: lock the current one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd: int | None = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


class OutputWriter:
    """Lines go to OUTPUT.part; `commit` makes them durable and records where the input resumes in
    OUTPUT.part.json; `finish` renames the part file to OUTPUT. Stdout ('-') is written straight through.

    An existing OUTPUT (or an interrupted run's part file) is refused unless `overwrite` or `resume`. OUTPUT.gz is
    written as gzip, one member per commit, so that a resume cuts it at a member's end and appends."""

    def __init__(self, path: str, key: dict, resume: bool = False, overwrite: bool = False):
        self.path, self.key = path, key
        self.stdout = path == "-"
        self.resume_point: tuple[int, int] | None = None
        self.state: dict = {}
        self.lines_done = 0
        self.bytes = 0
        self.lock = None
        self.z = None
        if self.stdout:
            if resume:
                raise ValueError("--resume needs an output file, not stdout")
            self.f = sys.stdout.buffer
            return
        if Path(path).is_dir():
            raise TagInputError(f"-o {path}: is a folder; give the path of the file to write")
        self.part, self.sidecar = Path(path + ".part"), Path(path + ".part.json")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(path)
        try:
            self._open(resume, overwrite)
        except BaseException:
            self.lock.release()
            raise
        if path.endswith(".gz"):
            self.z = _gzip_member()

    def _open(self, resume: bool, overwrite: bool) -> None:
        path = self.path
        if resume and self.sidecar.is_file() and self.part.is_file():
            state = json.loads(self.sidecar.read_text())
            if state["key"] != self.key:
                raise ValueError(f"--resume: {self.sidecar} was written for {state['key']}, not {self.key}; "
                                 f"run with --overwrite to start over")
            self.f = open(self.part, "r+b")
            self.f.truncate(state["bytes"])
            self.f.seek(state["bytes"])
            self.resume_point = (state["next_line"], state["resume_at"])
            self.state = state
            self.lines_done = state["lines"]
            self.bytes = state["bytes"]
            return
        if resume and Path(path).is_file() and not self.part.exists():
            raise ValueError(f"--resume: {path} is already complete")
        if not resume and not overwrite:
            if Path(path).exists():
                raise TagInputError(f"{path} exists; pass --overwrite to replace it")
            if self.part.exists():
                raise TagInputError(f"{self.part}: an interrupted run's output is there; pass --resume to "
                                    f"continue it or --overwrite to start over")
        self.f = open(self.part, "wb")

    def write(self, data: bytes) -> None:
        self.f.write(self.z.compress(data) if self.z is not None else data)
        self.lines_done += 1
        if self.z is None:
            self.bytes += len(data)  # counted only once a whole line is written

    def _end_member(self) -> None:
        if self.z is not None:
            self.f.write(self.z.flush())
            self.z = _gzip_member()
            self.bytes = self.f.tell()

    def commit(self, next_line: int, resume_at: int, extra: dict | None = None) -> None:
        """Make everything written so far durable and record the input position just after it (and `extra`:
        the input's identity, the counts so far)."""
        if self.stdout:
            self.f.flush()
            return
        self._end_member()
        self.f.flush()
        os.fsync(self.f.fileno())
        state = {"key": self.key, "bytes": self.bytes, "lines": self.lines_done,
                 "next_line": next_line, "resume_at": resume_at, **(extra or {})}
        tmp = Path(self.path + ".part.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.sidecar)
        self.state = state

    def finish(self) -> None:
        if self.stdout:
            self.f.flush()
            return
        self._end_member()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.part, self.path)
        self.sidecar.unlink(missing_ok=True)
        self.lock.release()

    def close(self) -> None:
        """Leave the part file and sidecar for --resume (after an error or an interrupt)."""
        if not self.stdout and not self.f.closed:
            self.f.close()
        if self.lock is not None:
            self.lock.release()


def _gzip_member():
    return zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer


class Progress:
    """A progress bar on stderr by input bytes with this run's documents/s, sub-word tokens/s and errors (tqdm's
    ETA); its last refresh shows the figures of the summary."""

    def __init__(self, reader: LineReader, stats, counts: dict, enabled: bool = True, t0: float | None = None):
        self.reader, self.stats, self.counts, self.enabled = reader, stats, counts, enabled
        self.t0 = time.perf_counter() if t0 is None else t0
        self.bar = None
        self.finished = False

    def __enter__(self) -> Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.reader.total_bytes or None, unit="B", unit_scale=True, dynamic_ncols=True,
                            mininterval=1.0, file=sys.stderr, desc="tag")
        self.last = 0.0
        self.tokens0 = self.stats.tokens
        return self

    def tick(self, seconds: float | None = None) -> None:
        """Refresh at most once a second; with `seconds`, now, as of that much time since the start."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.last < 1.0 and seconds is None:
            return
        self.last = now
        dt = max(now - self.t0 if seconds is None else seconds, 1e-9)
        self.bar.n = self.reader.bytes_read
        self.bar.set_postfix_str(f"{self.counts['lines'] / dt:.1f} docs/s, "
                                 f"{(self.stats.tokens - self.tokens0) / dt:.0f} tok/s, "
                                 f"{self.counts['errors']} errors", refresh=True)

    def done(self, seconds: float) -> None:
        """The last refresh: the rates the summary reports (this run's lines over `seconds`)."""
        self.tick(seconds)
        self.finished = True

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            if not self.finished:
                self.tick(time.perf_counter() - self.t0)
            self.bar.close()
