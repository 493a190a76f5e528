"""Writing the entities of a tagging run: the output line of each `Record`, the checks of an output path before any
work, the lock that keeps one writer per output, the writer (a temporary part file, a resume sidecar, a final
rename; gzip as one member per commit) and the progress bar.

Why `writing` (beside `reading`): the output half of tagging I/O owns everything that makes output durable and
resumable, so a change to commits, locks or the sidecar format is one module's. `TagInterrupted` is here:
it reports what the writer committed and how to continue. The paths it may write and how it creates them (checks,
the lock) are `outpolicy`'s, shared with the other engines. It imports no JAX (only `reading` and `outpolicy`, which
import none)."""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from flaxner.tagging.outpolicy import OutputLock, check_output, is_regular, open_new, open_own, refuse_link
from flaxner.tagging.reading import Line, LineReader, Record, TagInputError

__all__ = ["OutputLock", "OutputWriter", "Progress", "TagInterrupted", "check_output", "default_output",
           "output_line"]


class TagInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during `tag_file`: what was written is committed (the message says how to continue)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def default_output(path: str, suffix: str = ".entities.jsonl") -> str:
    """corpus.jsonl(.gz) / corpus.txt -> corpus.entities.jsonl (or another `suffix`: the format's); stdin -> stdout."""
    if path == "-":
        return "-"
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    for suf in (".jsonl", ".json", ".ndjson", ".txt"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return str(p.with_name(name + suffix))


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


class OutputWriter:
    """Lines go to OUTPUT.part; `commit` makes them durable and records where the input resumes in
    OUTPUT.part.json; `finish` renames the part file to OUTPUT. Stdout ('-') is written straight through.

    An existing OUTPUT (or an interrupted run's part file) is refused unless `overwrite` or `resume`. OUTPUT.gz is
    written as gzip, one member per commit, so that a resume cuts it at a member's end and appends. With
    `assemble(part, path)`, `finish` writes OUTPUT from the finished part file instead of renaming it (a whole-file
    format: `formats.assemble_file`); an interrupted assembly leaves the part file and sidecar, so --resume redoes it."""

    def __init__(self, path: str, key: dict, resume: bool = False, overwrite: bool = False,
                 assemble: Callable[[Path, str], None] | None = None):
        self.path, self.key, self.assemble = path, key, assemble
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
        refuse_link(path)  # the final rename would leave OUTPUT a link, or replace the user's
        if resume and is_regular(self.sidecar) and is_regular(self.part):
            with open_own(self.sidecar) as f:
                state = json.loads(f.read())
            if state["key"] != self.key:
                raise ValueError(f"--resume: {self.sidecar} was written for {state['key']}, not {self.key}; "
                                 f"run with --overwrite to start over")
            self.f = open_own(self.part, "r+b")
            self.f.truncate(state["bytes"])
            self.f.seek(state["bytes"])
            self.resume_point = (state["next_line"], state["resume_at"])
            self.state = state
            self.lines_done = state["lines"]
            self.bytes = state["bytes"]
            return
        if resume and is_regular(path) and not os.path.lexists(self.part):
            raise ValueError(f"--resume: {path} is already complete")
        if not resume and not overwrite:
            if os.path.lexists(path):
                raise TagInputError(f"{path} exists; pass --overwrite to replace it")
            if os.path.lexists(self.part):
                raise TagInputError(f"{self.part}: an interrupted run's output is there; pass --resume to "
                                    f"continue it or --overwrite to start over")
        # A part file there (regular, under our lock) is an earlier run's that --overwrite (or a --resume with
        # nothing committed) starts over: unlinked and created anew, never written through.
        self.f = open_new(self.part, stale=lambda p: True)

    def write(self, data: bytes, lines: int = 1) -> None:
        """Write `lines` whole output lines (one call, so that an interrupt never splits a document's lines)."""
        self.f.write(self.z.compress(data) if self.z is not None else data)
        self.lines_done += lines
        if self.z is None:
            self.bytes += len(data)  # counted only once a whole line is written

    def _end_member(self) -> None:
        if self.z is not None:
            self.f.write(self.z.flush())
            self.z = _gzip_member()
            self.bytes = self.f.tell()

    def _sync(self) -> None:
        """Flush what was written; a part file also closes its gzip member and is fsynced (stdout is flushed only)."""
        if not self.stdout:
            self._end_member()
        self.f.flush()
        if not self.stdout:
            os.fsync(self.f.fileno())

    def commit(self, next_line: int, resume_at: int, extra: dict | None = None) -> None:
        """Make everything written so far durable and record the input position just after it (and `extra`:
        the input's identity, the counts so far)."""
        self._sync()
        if self.stdout:
            return
        state = {"key": self.key, "bytes": self.bytes, "lines": self.lines_done,
                 "next_line": next_line, "resume_at": resume_at, **(extra or {})}
        tmp = Path(self.path + ".part.tmp")
        with open_new(tmp, stale=_is_sidecar) as f:  # a killed writer's leftover is replaced; anything else refused
            f.write(json.dumps(state).encode())
        os.replace(tmp, self.sidecar)
        self.state = state

    def finish(self) -> None:
        self._sync()
        if self.stdout:
            return
        self.f.close()
        if self.assemble is None:
            os.replace(self.part, self.path)
        else:
            self.assemble(self.part, self.path)
            self.part.unlink()
        self.sidecar.unlink(missing_ok=True)
        self.lock.release()

    def close(self) -> None:
        """Leave the part file and sidecar for --resume (after an error or an interrupt)."""
        if not self.stdout and not self.f.closed:
            self.f.close()
        if self.lock is not None:
            self.lock.release()


def _is_sidecar(path: Path) -> bool:
    """A resume record of flaxner's (what `commit` writes)."""
    try:
        with open_own(path) as f:
            state = json.loads(f.read(1 << 20))
        return isinstance(state, dict) and {"key", "bytes", "next_line"} <= state.keys()
    except (OSError, ValueError):
        return False


def _gzip_member():
    return zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer


class Progress:
    """A progress bar on stderr by the input bytes of the lines written (not of those read into the look-ahead)
    with this run's documents/s, sub-word tokens/s, errors and the lines read ahead (tqdm's ETA); its last refresh
    shows the figures of the summary. `track` wraps the input lines, `tick(line)` follows a written line."""

    def __init__(self, reader: LineReader, stats, counts: dict, enabled: bool = True, t0: float | None = None):
        self.reader, self.stats, self.counts, self.enabled = reader, stats, counts, enabled
        self.t0 = time.perf_counter() if t0 is None else t0
        self.bar = None
        self.finished = False
        # (line number, input bytes read through it) of the lines read and not yet written: appended by the
        # thread that reads, popped here (deque appends and pops are thread-safe)
        self.marks: deque[tuple[int, int]] = deque()
        self.read = 0      # lines read
        self.written = 0   # the number of the last line written
        self.position = 0  # input bytes through it

    def track(self, lines: Iterable[Line]) -> Iterator[Line]:
        """The input lines, noting where each ends in the input (nothing when the bar is off)."""
        for line in lines:
            if self.enabled:
                self.read += 1
                self.marks.append((line.number, self.reader.bytes_read))
            yield line

    def __enter__(self) -> Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.reader.total_bytes or None, unit="B", unit_scale=True, dynamic_ncols=True,
                            mininterval=1.0, file=sys.stderr, desc="tag")
        self.last = 0.0
        self.tokens0 = self.stats.tokens
        return self

    def tick(self, line: int | None = None, seconds: float | None = None) -> None:
        """`line` (its number) was written. Refresh at most once a second; with `seconds`, now, as of that much
        time since the start."""
        if self.bar is None:
            return
        if line is not None:
            self.written = line
        now = time.perf_counter()
        if now - self.last < 1.0 and seconds is None:
            return
        self.last = now
        while self.marks and self.marks[0][0] <= self.written:
            self.position = self.marks.popleft()[1]
        dt = max(now - self.t0 if seconds is None else seconds, 1e-9)
        self.bar.n = self.position
        ahead = self.read - self.counts["lines"]
        self.bar.set_postfix_str(f"{self.counts['lines'] / dt:.1f} docs/s, "
                                 f"{(self.stats.tokens - self.tokens0) / dt:.0f} tok/s, "
                                 f"{self.counts['errors']} errors" + (f", {ahead} read ahead" if ahead else ""),
                                 refresh=True)

    def done(self, seconds: float) -> None:
        """The last refresh: the rates the summary reports (this run's lines over `seconds`)."""
        self.tick(seconds=seconds)
        self.finished = True

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            if not self.finished:
                self.tick(seconds=time.perf_counter() - self.t0)
            self.bar.close()
