"""Byte-level access to an input's lines: bounded line reads, line starts, and the boundaries of documents that span
lines (`tag.document_field`, `--document-field`: consecutive JSONL lines with the same value of the field are one
document), so that a shard, a `--processes` child or a Ray slice never cuts a document. No JAX, no parsing beyond
the one field."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

_CHUNK = 1 << 24
_BACK = 1 << 16  # bytes read per step when looking back for a line's start


def read_line(f: BinaryIO, cap: int) -> tuple[bytes | None, int]:
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


def line_start(f: BinaryIO, lo: int) -> int:
    """The first line start at or after byte `lo` (the line straddling `lo` belongs to the range before), found in
    bounded reads."""
    if lo <= 0:
        return 0
    f.seek(lo - 1)
    while True:
        raw = f.readline(1 << 20)
        if not raw or raw.endswith(b"\n"):
            return f.tell()


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


def document_key(value: Any) -> Any:
    """A field's value as a hashable key: strings and numbers as they are, anything else as canonical JSON; a
    missing field (None) is no document (the line stands alone)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def line_document(raw: bytes | None, field: str) -> Any:
    """The document key of one raw JSONL line (None: not a JSON object, no such field, or not read)."""
    if not raw or not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return document_key(obj.get(field)) if isinstance(obj, dict) else None


def _previous_line(f: BinaryIO, p: int, cap: int) -> bytes | None:
    """The line that ends just before line start `p` (> 0), or None when it is longer than `cap`."""
    lo = p - 1  # the previous line's newline
    while lo > 0:
        step = min(_BACK, lo)
        f.seek(lo - step)
        block = f.read(step)
        k = block.rfind(b"\n")
        if k >= 0:
            lo = lo - step + k + 1
            break
        lo -= step
        if cap and p - lo > cap + 1:
            return None
    if cap and p - lo > cap + 1:
        return None
    f.seek(lo)
    return f.read(p - lo)


def document_start(f: BinaryIO, p: int, size: int, field: str, cap: int = 0) -> tuple[int, int]:
    """The first line start at or after line start `p` where a document begins (the line before it belongs to
    another document, or to none), and the lines skipped to get there: a range cut there keeps documents whole.
    The file's position afterwards is undefined."""
    if p <= 0 or p >= size:
        return p, 0
    prev = line_document(_previous_line(f, p, cap), field)
    if prev is None:
        return p, 0
    f.seek(p)
    skipped = 0
    while p < size:
        raw, n = read_line(f, cap)
        if not n or line_document(raw, field) != prev:
            return p, skipped
        p = f.tell()
        skipped += 1
    return p, skipped


class DocumentEdges:
    """For line-counted ranges (gzip inputs, whose shards are line ranges): the lines at a range's head that
    continue the document of the line before it belong to the range before; after its last line, the lines that
    continue that line's document still belong to it."""

    def __init__(self, field: str):
        self.field = field
        self.prev: Any = None
        self.heading = True

    def seen_before(self, raw: bytes | None) -> None:
        """The last line before the range."""
        self.prev = line_document(raw, self.field)

    def skip_head(self, raw: bytes | None) -> bool:
        """Whether a line at the range's head still belongs to the range before."""
        if self.heading and self.prev is not None and line_document(raw, self.field) == self.prev:
            return True
        self.heading = False
        return False

    def continues(self, last: bytes | None, raw: bytes | None) -> bool:
        """Whether `raw`, after the range's end, continues the document of the range's last line `last`."""
        doc = line_document(last, self.field)
        return doc is not None and line_document(raw, self.field) == doc
