"""The output folder of `flaxner tag --engine ray`: its plan, slice and slice-stats files, the join, and the output
policy (`tagging.outpolicy`, the local engine's) applied to them: an earlier run's folder or --join is refused without
--resume or --overwrite; --overwrite removes only what the earlier plan.json lists; no output is, holds or links to an
input; local files are created O_EXCL|O_NOFOLLOW. Paths are local or URIs (pyarrow.fs); it imports no Ray."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path

from flaxner.tagging import outpolicy
from flaxner.tagging.reading import TagInputError

PLAN = "plan.json"
_CHUNK = 1 << 24
_OURS = re.compile(r"slice-\d{5}\.(jsonl|stats\.json)")  # the names of a run's slice and slice-stats files
_TMP = re.compile(r"(slice-\d{5}\.(jsonl|stats\.json)|plan\.json)\.[0-9a-f]{12}\.tmp")  # write_atomic's


def slice_name(index: int) -> str:
    return f"slice-{index:05d}.jsonl"


def stats_name(index: int) -> str:
    """A committed slice's counts (written just before the slice itself), for the summary of a resumed run."""
    return f"slice-{index:05d}.stats.json"


def fs_of(uri: str):
    """(pyarrow filesystem, path inside it) of a local path or a URI."""
    from pyarrow import fs

    if "://" not in uri:
        return fs.LocalFileSystem(), os.path.abspath(uri)
    return fs.FileSystem.from_uri(uri)


def create_file(filesystem, path: str):
    """A new file to write: on a local disk created O_EXCL|O_NOFOLLOW (`outpolicy.create_new`: never through a link
    planted there), on an object store (no links there) a stream."""
    from pyarrow import fs

    if isinstance(filesystem, fs.LocalFileSystem):
        return outpolicy.open_new(path)
    return filesystem.open_output_stream(path, compression=None)


def is_file_at(filesystem, path: str) -> bool:
    """A file at `path` itself: on a local disk a regular file, a symlink is not (it was not written here)."""
    from pyarrow import fs

    if isinstance(filesystem, fs.LocalFileSystem):
        return outpolicy.is_regular(path)
    return filesystem.get_file_info(path).is_file


def write_atomic(filesystem, path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    with create_file(filesystem, tmp) as f:
        f.write(data)
    filesystem.move(tmp, path)


def sweep_tmp(filesystem, out: str) -> None:
    """Remove the uncommitted .tmp files of attempts that died (only names `_write_atomic` and the actors make)."""
    from pyarrow import fs

    for info in filesystem.get_file_info(fs.FileSelector(out, allow_not_found=True)):
        if _TMP.fullmatch(info.base_name):
            filesystem.delete_file(info.path)


def read_plan(filesystem, path: str) -> dict:
    from pyarrow import fs

    if isinstance(filesystem, fs.LocalFileSystem):
        with outpolicy.open_own(path) as f:  # a link planted there is refused, not read through
            return json.loads(f.read())
    with filesystem.open_input_stream(path, compression=None) as f:
        return json.loads(f.read())


def prepare_folder(filesystem, out: str, out_dir: str, key: dict, resume: bool, overwrite: bool) -> dict | None:
    """The plan to resume, or None to start over: an earlier run's output is refused without --resume or
    --overwrite; --overwrite removes only the files its plan.json lists (a slice-* file it does not list is
    refused, never removed)."""
    from pyarrow import fs

    names = [i.base_name for i in filesystem.get_file_info(fs.FileSelector(out, allow_not_found=True))]
    plan = read_plan(filesystem, f"{out}/{PLAN}") if PLAN in names else None
    if plan is not None and resume:
        if plan["key"] != key:
            raise ValueError(f"--resume: {out_dir}/{PLAN} was written for other inputs or options (files, sizes, "
                             f"model or tag options differ); run with --overwrite to start over")
        return plan
    found = sorted(n for n in names if _OURS.fullmatch(n))
    if plan is not None and not overwrite:
        raise TagInputError(f"-o {out_dir}: holds an earlier run's output ({PLAN} and its slices); pass --resume "
                            f"to continue it or --overwrite to replace it")
    listed = {f(s["index"]) for s in (plan or {}).get("slices", []) for f in (slice_name, stats_name)}
    foreign = [n for n in found if n not in listed]
    if foreign:
        raise TagInputError(f"-o {out_dir}: {foreign[0]} is no slice its {PLAN} lists, so flaxner cannot tell it "
                            f"wrote it; move it away (or choose another folder) and run again")
    for n in found + ([PLAN] if plan is not None else []):  # --overwrite: the earlier run's own files
        filesystem.delete_file(f"{out}/{n}")
    return None


def check_outputs(files: list[dict], out_dir: str, join: str | None, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that is a symlink or a file or holds an input, and a --join file
    that is an input, a symlink or a folder, or exists (without --resume or --overwrite)."""
    inputs = [f["uri"] for f in files]
    if "://" not in out_dir:
        outpolicy.refuse_link(out_dir.rstrip("/") or "/")
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise TagInputError(f"-o {out_dir}: is not a folder; --engine ray writes a folder of slice files")
        here, there = Path(out_dir).resolve(), Path(os.path.abspath(out_dir))
        for src in inputs:  # as named and as resolved: a slice or plan written there could be (or replace) it
            if "://" not in src and (Path(src).resolve().is_relative_to(here) or
                                     Path(os.path.abspath(src)).is_relative_to(there)):
                raise TagInputError(f"-o {out_dir}: holds the input file {src}; choose an output folder apart from "
                                    f"the inputs")
    if join is None:
        return
    if "://" in join:
        exists = fs_of(join)[0].get_file_info(fs_of(join)[1]).type.name != "NotFound"
    else:
        outpolicy.refuse_inputs(join, inputs, "--join")
        outpolicy.refuse_link(join, "--join")
        name = Path(join).name
        if "://" not in out_dir and Path(join).parent.resolve() == Path(out_dir).resolve() and \
                (name == PLAN or _OURS.fullmatch(name) or _TMP.fullmatch(name)):
            raise TagInputError(f"--join {join}: a name the slices of -o {out_dir} use; choose another")
        if os.path.isdir(join):
            raise TagInputError(f"--join {join}: is a folder; give the path of the file to write")
        exists = os.path.lexists(join)
    if exists and not (resume or overwrite):
        raise TagInputError(f"--join {join} exists; pass --overwrite to replace it")


def slice_counts(filesystem, out: str, index: int) -> dict:
    """A committed slice's counts: its stats file, else (a driver killed between the two renames) its lines."""
    counts = {"lines": 0, "errors": 0, "warnings": 0, "entities": 0}
    if is_file_at(filesystem, f"{out}/{stats_name(index)}"):
        with filesystem.open_input_stream(f"{out}/{stats_name(index)}", compression=None) as f:
            return {k: int(v) for k, v in json.loads(f.read()).items() if k in counts}
    with filesystem.open_input_stream(f"{out}/{slice_name(index)}", compression=None) as f:
        for line in io.BufferedReader(f, 1 << 20):
            rec = json.loads(line)
            counts["lines"] += 1
            counts["errors"] += "error" in rec
            counts["warnings"] += "warning" in rec
            counts["entities"] += len(rec.get("entities") or ())
    return counts


def join_slices(out_dir: str, n_slices: int, target: str, spec=None) -> None:
    """All slice files in input order into `target` (through a .tmp and a rename); with an output format's `spec`,
    the slices hold staged records and `target` gets the format written from them (`formats.write_from_staged`)."""
    src_fs, out = fs_of(out_dir)
    dst_fs, path = fs_of(target)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"

    def lines():
        for k in range(n_slices):
            with src_fs.open_input_stream(f"{out}/{slice_name(k)}", compression=None) as src:
                yield from io.BufferedReader(src, 1 << 20)

    with create_file(dst_fs, tmp) as dst:
        if spec is not None:
            from flaxner.tagging.formats import write_from_staged

            write_from_staged(spec, lines(), dst)
        for k in range(n_slices if spec is None else 0):
            with src_fs.open_input_stream(f"{out}/{slice_name(k)}", compression=None) as src:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
    dst_fs.move(tmp, path)
