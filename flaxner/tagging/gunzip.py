"""Reading gzip as the tagger needs it: the bytes decompressed before a truncation or corruption come out before the
error (so every readable line is tagged), and marks of the decompressor's state let a shard start decompressing near
its slice (`count_gz_lines` leaves them in its counting pass). Used by `tagging.reading`."""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO


@dataclass
class GzipMark:
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


class Gunzip(io.RawIOBase):
    """The decompressed bytes of a gzip file (members one after another) through zlib. Unlike gzip.GzipFile, the
    bytes decompressed before a truncation or corruption are returned before the error is raised; and it can start
    at a `GzipMark`, so a shard decompresses what precedes its slice once, in the counting pass, not twice."""

    BLOCK = 1 << 16

    def __init__(self, f: BinaryIO, mark: GzipMark | None = None):
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

    def mark(self, lines_before: int, at_line_start: bool) -> GzipMark:
        return GzipMark(self.n, self.d.copy(), lines_before, at_line_start)

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
        """Read past the next line break (a `GzipMark` taken mid-line)."""
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


def count_gz_lines(path: str, spacing: int = 1 << 26, most: int = 256) -> tuple[int, bool, list[GzipMark]]:
    """Lines of a gzip file (a last line without a newline included), whether it ends damaged, and marks every
    `spacing` decompressed bytes (at most `most`: past that every other one goes, and the spacing doubles)."""
    count, last, damaged, pos, next_mark = 0, b"\n", False, 0, spacing
    with open(path, "rb") as f:
        g = Gunzip(f)
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
