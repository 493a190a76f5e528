"""The Ray engine's input plan: files and globs expanded, cut into byte-range slices (`.gz` whole), each slice's
first line number counted (on the driver, or in Ray tasks for large inputs), and a slice's lines read back through
the local engine's reader (`tagging.reading.LineReader`)."""

from __future__ import annotations

import fnmatch
import io
import math
import sys
from typing import Any

from flaxner.tagging.rayfolder import fs_of
from flaxner.tagging.lines import newlines_between
from flaxner.tagging.reading import LineReader

DRIVER_COUNT_BYTES = 256 << 20  # newlines counted on the driver up to this many bytes, else in Ray tasks


def _uri(path: str, like: str) -> str:
    """The URI the workers reopen a glob match by: a local absolute path, or the scheme of `like` + path (right
    for s3://, gs://, file://; a URI with a host in it, hdfs://host/..., needs its files named one by one)."""
    if "://" not in like:
        return path
    return like.split("://", 1)[0] + "://" + path


def expand_inputs(inputs: list[str]) -> list[dict]:
    """Files of each input in argument order (a glob's matches sorted): [{"uri", "size"}]; missing -> error."""
    from pyarrow import fs

    files: list[dict] = []
    for spec in inputs:
        if not any(c in spec for c in "*?["):
            filesystem, path = fs_of(spec)
            info = filesystem.get_file_info(path)
            if info.type != fs.FileType.File:
                raise FileNotFoundError(f"{spec}: no such input file")
            files.append({"uri": spec if "://" in spec else path, "size": info.size})
            continue
        head, _, rest = spec.partition("://") if "://" in spec else ("", "", spec)
        parts = rest.split("/")
        k = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
        base = "/".join(parts[:k]) or ("/" if rest.startswith("/") else ".")
        filesystem, base_path = fs_of(f"{head}://{base}" if head else base)
        pattern = base_path.rstrip("/") + "/" + "/".join(parts[k:])
        recursive = k < len(parts) - 1 or "**" in rest
        infos = filesystem.get_file_info(fs.FileSelector(base_path, recursive=recursive, allow_not_found=True))
        found = sorted(i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatchcase(i.path, pattern))
        if not found:
            raise FileNotFoundError(f"{spec}: no input file matches")
        files += [{"uri": _uri(p, spec), "size": filesystem.get_file_info(p).size} for p in found]
    return files


def cut_slices(files: list[dict], slice_bytes: int) -> list[dict]:
    """Nominal slices: `.gz` files whole, plain files in ceil(size / slice_bytes) byte ranges."""
    if slice_bytes < 1:
        raise ValueError(f"slice size {slice_bytes}: must be at least 1 byte")
    slices = []
    for f in files:
        n = 1 if f["uri"].endswith(".gz") else max(1, math.ceil(f["size"] / slice_bytes))
        for k in range(n):
            slices.append({"index": len(slices), "uri": f["uri"], "part": k, "parts": n,
                           "lo": f["size"] * k // n, "hi": f["size"] * (k + 1) // n, "first_line": 1})
    return slices


def count_newlines(row: dict) -> dict:
    """Newlines in bytes [lo - 1, hi - 1) of a slice's file: summed over the slices before a slice k > 0, plus 2,
    they give its first line number (its first line starts after the first newline at or past lo - 1)."""
    filesystem, path = fs_of(row["uri"])
    lo, hi = max(row["lo"] - 1, 0), max(row["hi"] - 1, 0)
    with filesystem.open_input_file(path) as f:
        count = newlines_between(f, lo, hi)
    return {"index": row["index"], "newlines": count}


def number_slices(slices: list[dict]) -> None:
    """Fill in `first_line` of the slices of multi-slice files: a parallel counting pass (Ray Data tasks), or on
    the driver when there is little to count (a Ray task costs seconds to start; 256 MiB count in a fraction)."""
    todo = [s for s in slices if s["parts"] > 1 and s["part"] < s["parts"] - 1]
    nbytes = sum(s["hi"] - s["lo"] for s in todo)
    if nbytes <= DRIVER_COUNT_BYTES:
        counts = {r["index"]: r["newlines"] for r in map(count_newlines, todo)}
    else:
        import ray

        print(f"tag: counting the lines of {nbytes / 2**30:.1f} GiB in {len(todo)} Ray tasks", file=sys.stderr)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map(count_newlines)
        counts = {r["index"]: r["newlines"] for r in ds.take_all()}
    before = 0
    for s in slices:
        if s["part"] == 0:
            before = 0
            continue
        before += counts[s["index"] - 1]
        s["first_line"] = before + 2


def iter_slice(uri: str, lo: int, hi: int, first_line: int, max_line_bytes: int = 0, document_field: str = "") -> Any:
    """The `tagging.reading.Line`s of one slice, read by the local engine's reader: a plain file's lines starting in
    [lo, hi), numbered from `first_line`; a `.gz` file's every line (a damaged one: every readable line, then one
    error line). A line over `max_line_bytes` (0: no cap) comes back unread, with its error. With `document_field`
    the slice's ends move to document starts (a document belongs to the slice where it starts)."""
    filesystem, path = fs_of(uri)
    opener = None if "://" not in uri else lambda: io.BufferedReader(filesystem.open_input_file(path), 1 << 20)
    reader = LineReader(uri if opener else path, max_line_bytes=max_line_bytes, opener=opener,
                        document_field=document_field)
    yield from reader if uri.endswith(".gz") else reader.iter_range(lo, hi, first_line)
