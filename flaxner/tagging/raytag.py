"""`flaxner tag --engine ray`: tag a corpus of many (or big) files on a Ray cluster, one output file per input slice.

Design (Ray Data, the way the issue asks, but not `read_json`):

- The driver expands the inputs (paths, globs, or any URI pyarrow.fs reads: s3://, gs://, hdfs://) and cuts each
  plain file into (file, byte range) slices of `slice_bytes`, cut at line starts exactly as
  `tagging.reading.LineReader._iter_plain` does (a slice owns the lines that *start* in its range). A `.gz` file
  cannot be cut, so it is one slice: split a compressed corpus into many files.
- Line numbers: a slice's first line number is 1 + the newlines before it. A counting pass (one Ray Data map task
  per slice of the multi-slice files, in parallel; on the driver when under rayplan.DRIVER_COUNT_BYTES) counts the newlines
  of each slice's range; prefix sums give every slice's first line. Counting is memchr-speed (GB/s) while tagging
  is MB/s, so it costs well under 1% of the run (one more read of the bytes: on object stores a second GET of the
  corpus). Tagging with numbers relative to the slice and fixing them up afterwards would avoid that read, but the
  output lines hold the numbers (errors, and ids of lines without one), so every slice file would be rewritten.
  The plan (slices and first lines) is saved in OUT_DIR/plan.json, so `--resume` does not count again.
- Tagging: `ray.data.from_items(slices, one block each).map_batches(_SliceTagger, batch_size=1, concurrency=N)`. Each
  actor holds one warm compiled `Tagger`; for a slice it reads the lines itself with the local engine's reader
  (`tagging.reading.LineReader.iter_range`, over pyarrow.fs for URIs: the same --max-line-bytes cap, the same damaged
  gzip ending), turns every line into a `Record` with `tagging.reading.parse_line` (blank, bad, undecodable lines
  become error rows, never exceptions), runs `Tagger.stream` over the whole slice (so packing is the CLI's), writes
  the output lines to a uniquely named `slice-NNNNN.jsonl.<id>.tmp` (created O_EXCL|O_NOFOLLOW on a local disk),
  writes its counts to `slice-NNNNN.stats.json` and renames the .tmp to `slice-NNNNN.jsonl`, then returns one stats
  row. A whole slice per
  task is what makes commits per slice possible: rows of a Ray Data read would be re-blocked between read and map, so
  no task would own a slice. Ray Data gives the actor pool, its placement (SPREAD), the GPU/CPU requests and the fault
  tolerance (actors restarted, tasks retried: `max_restarts=-1`, `max_task_retries=-1`).
- Faults: a killed actor loses only its uncommitted .tmp; Ray retries the slice from scratch on a live actor. A
  killed driver leaves the committed slices; `--resume` tags only the slices without a final file (its summary
  counts the whole output, as the local engine's). `--join` then concatenates all slices in input order.
- Outputs follow the local engine's policy (`tagging.outpolicy`): an earlier run's folder or `--join` file is refused
  without `--resume` or `--overwrite`; `--overwrite` removes only the files the earlier plan.json lists; no output
  path may be (or hold) an input or a symlink; one driver per local folder (`plan.json.part.lock`).
- Pool: one actor per GPU by default (`gpus_per_actor` < 1 shares a GPU, with JAX's memory fraction split as
  `tagprocs.child_env` does); on CPU, actors × `cpus_per_actor` must leave one CPU per node (ray-project/ray#44687:
  a pool that takes every CPU starves any other task of the dataset). The pool is printed before work starts.

The module is `flaxner.tagging.raytag`, not `flaxner.ray`, so that `import ray` inside the package, tools run from the
package folder and readers of tracebacks never meet two modules called `ray`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import uuid
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from flaxner.config import Engine, choices
from flaxner.data.sentences import load_for
from flaxner.tagging import outpolicy
from flaxner.tagging.formats import OutputSpec, check_spec, spec_of
from flaxner.tagging.rayfolder import PLAN, check_outputs, create_file, fs_of, is_file_at, join_slices, \
    prepare_folder, slice_counts, slice_name, stats_name, sweep_tmp, write_atomic
from flaxner.tagging.job import count, new_counts, tagged_lines
from flaxner.tagging.summary import TagSummary
from flaxner.tagging.raypool import Placement, choose_pool
from flaxner.tagging.rayplan import cut_slices, expand_inputs, iter_slice, number_slices
from flaxner.tagging.reading import MAX_LINE_BYTES, input_format

_FAULT_ENV = "FLAXNER_RAYTAG_FAULT"  # test hook: "die:K:MARKER" (crash once after K slices) or "sleep:S"
# The TagConfig options of `flaxner tag`, for both engines (the local one reads this tuple too, so they cannot drift)
OVERRIDES = ("aggregation", "max_length", "stride", "batch_size", "batch_tokens", "pack_length", "lookahead", "dtype",
             "words", "context", "context_size", "context_views", "sentence_thresholds", "segment_length",
             "document_field")


class _SliceTagger:
    """A Ray Data actor: a warm `Tagger`; each call tags whole slices into committed slice files."""

    def __init__(self, model_dir: str, out_dir: str, fmt: str, text_field: str, id_field: str, keep_fields: bool,
                 overrides: dict, mem_fraction: str | None = None, max_line_bytes: int = MAX_LINE_BYTES,
                 spec: dict | None = None):
        if mem_fraction:  # before JAX is imported in this worker
            os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", mem_fraction)
        import ray

        from flaxner.tagging.tagger import Tagger

        self.tagger = Tagger.from_pretrained(model_dir, text_field=text_field, **overrides)
        self.out_dir, self.fmt, self.id_field, self.keep_fields = out_dir, fmt, id_field, keep_fields
        self.max_line_bytes = max_line_bytes
        self.spec = OutputSpec(**spec) if spec else None  # another format than jsonl: slices of staged records
        self.node = ray.get_runtime_context().get_node_id()
        self.done = 0
        self.fault = os.environ.get(_FAULT_ENV, "")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self._tag_slice({k: batch[k][i] for k in batch}) for i in range(len(batch["index"]))]
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}

    def _tag_slice(self, s: dict) -> dict:
        t0, tokens0 = time.perf_counter(), self.tagger.stats.tokens
        uri, index = str(s["uri"]), int(s["index"])
        fmt = input_format(uri, self.fmt)
        filesystem, out = fs_of(self.out_dir)
        final = f"{out}/{slice_name(index)}"
        tmp = f"{final}.{uuid.uuid4().hex[:12]}.tmp"  # unique: a retry never shares a file with a dying attempt
        lines = iter_slice(uri, int(s["lo"]), int(s["hi"]), int(s["first_line"]), self.max_line_bytes,
                           self.tagger.cfg.document_field)
        counts = new_counts()
        chunk: list[bytes] = []
        with create_file(filesystem, tmp) as f:  # the local engine's loop, into the slice's file
            for rec, ents, line in tagged_lines(self.tagger, lines, fmt, self.id_field, self.keep_fields,
                                                spec=self.spec):
                chunk.append(line)
                count(counts, rec, ents)
                if len(chunk) >= 1024:
                    f.write(b"".join(chunk))
                    chunk = []
                self._maybe_fail(counts["lines"])
            f.write(b"".join(chunk))
        write_atomic(filesystem, f"{out}/{stats_name(index)}", json.dumps(counts).encode())
        filesystem.move(tmp, final)
        self.done += 1
        return {"index": index, **counts, "tokens": self.tagger.stats.tokens - tokens0,
                "seconds": time.perf_counter() - t0, "node": self.node, "pid": os.getpid()}

    def _maybe_fail(self, lines: int) -> None:
        """Test hook (FLAXNER_RAYTAG_FAULT): crash this worker once, midway through slice K+1, or slow down."""
        if self.fault.startswith("sleep:") and lines == 1:
            time.sleep(float(self.fault.split(":")[1]))
        elif self.fault.startswith("die:"):
            _, k, marker = self.fault.split(":", 2)
            if self.done == int(k) and lines == 1 and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os._exit(1)  # a crash, not a clean exit: Ray restarts the actor and retries the task


def _plan_key(files: list[dict], model_dir: str, fmt: str, text_field: str, id_field: str, keep_fields: bool,
              slice_bytes: int, overrides: dict) -> dict:
    key = {"files": files, "model": str(Path(model_dir).resolve()), "format": fmt, "text_field": text_field,
           "id_field": id_field, "keep_fields": keep_fields, "slice_bytes": slice_bytes,
           "overrides": {k: overrides[k] for k in sorted(overrides)}}
    return json.loads(json.dumps(key))  # as plan.json reads it back (tuples as lists)


def _connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, logging_level="WARNING")


def _tag_dataset(ray, todo: list[dict], pool: dict, model_dir: str, out_uri: str, fmt: str, spec: dict | None,
                 text_field: str,
                 id_field: str, keep_fields: bool, overrides: dict, max_line_bytes: int):
    """One block, hence one actor task, per slice (batch_size=1 keeps Ray Data from bundling blocks); at most two
    slices queued per actor, so a lost actor takes little back to the queue."""
    env = {k: os.environ[k] for k in (_FAULT_ENV,) if k in os.environ}  # the test hook, from the driver
    return ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
        _SliceTagger, batch_size=1, runtime_env={"env_vars": env} if env else None,
        compute=ray.data.ActorPoolStrategy(size=pool["actors"], max_tasks_in_flight_per_actor=2),
        num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"] or None, ray_remote_args_fn=Placement(pool["slots"]),
        fn_constructor_kwargs=dict(model_dir=model_dir, out_dir=out_uri, fmt=fmt, text_field=text_field,
                                   id_field=id_field, keep_fields=keep_fields, overrides=overrides,
                                   mem_fraction=pool["mem_fraction"], max_line_bytes=max_line_bytes, spec=spec))


def tag_files(inputs: list[str] | str, model_dir: str, out_dir: str, join: str | None = None,
              address: str | None = None, resume: bool = False, *, overwrite: bool = False, fmt: str = "auto",
              text_field: str = "text", id_field: str = "id", keep_fields: bool = False, slice_bytes: int = 32 << 20,
              max_line_bytes: int = MAX_LINE_BYTES, actors: int | None = None, cpus_per_actor: float | None = None,
              gpus_per_actor: float | None = None, progress: bool = True, output_format: str = "jsonl",
              model_version: str = "flaxner", **overrides) -> dict:
    """Tag files/globs/URIs on a Ray cluster (`address`, else a local one) into OUT_DIR/slice-NNNNN.jsonl, one
    output line per input line, and into `join` in input order if given; returns the summary (`lines`, `errors`,
    `warnings`, `entities` count the whole output, `this_run` this call's). `overrides` are TagConfig fields
    (batch_tokens, dtype, ...). OUT_DIR must be reachable by every node (a shared folder or a URI). An earlier run's
    output is refused unless `resume` or `overwrite` (the local engine's policy, `tagging.outpolicy`). Another
    `output_format` than jsonl: the slices hold staged records and `join` gets the format (so `join` is needed)."""
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    if not inputs or "-" in inputs:
        raise ValueError("--engine ray needs input files (not stdin)")
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model folder")
    if "://" not in model_dir:
        model_dir = str(Path(model_dir).resolve())
    t0 = time.perf_counter()
    spec = None
    if output_format != "jsonl":
        if not join:
            raise ValueError(f"--format {output_format} with --engine ray needs --join FILE (the slices hold staged "
                             f"records; the join writes the format)")
        check_spec(OutputSpec(output_format, model_version=model_version), join)
        spec = OutputSpec(output_format, id_field, keep_fields, model_version)
    files = expand_inputs(inputs)
    text = [f["uri"] for f in files if input_format(f["uri"], fmt) == "txt"]
    if overrides.get("document_field") and text:
        raise ValueError(f"--document-field {overrides['document_field']}: {text[0]} is text, not JSONL (a text line "
                         f"has no fields)")
    check_outputs(files, out_dir, join, resume, overwrite)
    key = _plan_key(files, model_dir, fmt, text_field, id_field, keep_fields, slice_bytes, overrides)
    key["max_line_bytes"] = max_line_bytes
    if spec is not None:
        key["output_format"] = spec.key()
    if (learnt := load_for(model_dir)) is not None:  # the run's learnt sentence starts cut the workers' rows
        key["sentences"] = learnt.fitted
    filesystem, out = fs_of(out_dir)
    filesystem.create_dir(out, recursive=True)
    # one driver per output folder, as one writer per output locally (a local folder; object stores have no flock)
    lock = outpolicy.OutputLock(f"{out}/{PLAN}") if "://" not in out_dir else None
    try:
        plan = prepare_folder(filesystem, out, out_dir, key, resume, overwrite)
        sweep_tmp(filesystem, out)
        return _run(files, plan, key, model_dir, out_dir, join, address, t0, progress,
                    dict(fmt=fmt, text_field=text_field, id_field=id_field, keep_fields=keep_fields,
                         overrides=overrides, max_line_bytes=max_line_bytes,
                         spec=None if spec is None else asdict(replace(spec, staged=True))),
                    dict(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor),
                    slice_bytes)
    finally:
        if lock is not None:
            lock.release()


def _run(files, plan, key, model_dir, out_dir, join, address, t0, progress, tag_args, pool_args, slice_bytes):
    import ray

    filesystem, out = fs_of(out_dir)
    out_uri = out_dir if "://" in out_dir else out
    _connect(address)
    if plan is None:
        slices = cut_slices(files, slice_bytes)
        number_slices(slices)
        plan = {"key": key, "slices": slices}
        write_atomic(filesystem, f"{out}/{PLAN}", json.dumps(plan).encode())
    slices = plan["slices"]
    todo = [s for s in slices if not is_file_at(filesystem, f"{out}/{slice_name(s['index'])}")]
    stats: list[dict] = []
    pool = None
    if todo:
        pool = choose_pool(**pool_args)
        pool["actors"] = min(pool["actors"], len(todo))
        pool["slots"] = pool["slots"][:pool["actors"]]
        print(f"tag: ray pool of {pool['actors']} actors × {pool['num_cpus']:g} CPU, {pool['num_gpus']:g} GPU "
              f"(cluster: {pool['nodes']} nodes, {pool['cpus']:g} CPUs, {pool['gpus']:g} GPUs); "
              f"{len(todo)} of {len(slices)} slices of {len(files)} files to tag", file=sys.stderr)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        with warnings.catch_warnings():  # ray_remote_args_fn: deprecated in 2.60, still there until 2.64
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = _tag_dataset(ray, todo, pool, model_dir, out_uri, **tag_args)
        for row in ds.iter_rows():
            stats.append(row)
            if not progress:
                continue
            print(f"tag: slice {row['index'] + 1}/{len(slices)} done: {row['lines']} lines, {row['errors']} errors, "
                  f"{row['seconds']:.1f}s ({len(stats)}/{len(todo)})", file=sys.stderr)
    if not todo:
        print(f"tag: all {len(slices)} slices of {out_dir} are done already", file=sys.stderr)
    sweep_tmp(filesystem, out)  # the .tmp of attempts that died (their slices were redone)
    if join:
        join_slices(out_uri, len(slices), join, None if tag_args["spec"] is None else OutputSpec(**tag_args["spec"]))
    seconds = time.perf_counter() - t0
    kinds = ("lines", "errors", "warnings", "entities")
    this_run = {k: int(sum(r[k] for r in stats)) for k in kinds}
    tagged = {int(r["index"]) for r in stats}
    # as the local engine's summary: the whole output, the slices committed by earlier runs included
    before = [slice_counts(filesystem, out, s["index"]) for s in slices if s["index"] not in tagged]
    total = {k: this_run[k] + sum(b[k] for b in before) for k in kinds}
    tokens = int(sum(r["tokens"] for r in stats))
    nodes: dict[str, int] = {}
    for r in stats:
        nodes[str(r["node"])] = nodes.get(str(r["node"]), 0) + 1
    core = TagSummary(**total, output=join or out_uri, this_run=this_run,
                      resumed_lines=total["lines"] - this_run["lines"], seconds=round(seconds, 3), tokens=tokens,
                      docs_per_s=round(this_run["lines"] / max(seconds, 1e-9), 1),
                      tokens_per_s=round(tokens / max(seconds, 1e-9), 1))
    return {**core.to_json(), "output_dir": out_uri, "join": join, "slices": len(slices), "slices_tagged": len(stats),
            "files": len(files), "nodes": nodes, "pool": pool, "tagged": sorted(tagged)}


def add_arguments(p) -> None:
    """The options of `flaxner tag --engine ray` (added to `flaxner tag`'s parser)."""
    g = p.add_argument_group("cluster (--engine ray; pip install 'flaxner[ray]')")
    g.add_argument("--engine", default="local", choices=choices(Engine),
                   help="ray: tag files/globs/URIs on a Ray cluster into -o OUT_DIR, one file per input slice")
    g.add_argument("--join", default=None, metavar="FILE", help="also write all output lines, in input order, here")
    g.add_argument("--address", default=None, help="Ray cluster to use ('auto', HOST:PORT); default: a local one")
    g.add_argument("--actors", type=int, default=None, help="tagging actors (default: one per GPU, else per CPU "
                                                            "leaving one CPU per node)")
    g.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs each actor reserves (default 1)")
    g.add_argument("--gpus-per-actor", type=float, default=None, help="below 1 shares a GPU between actors")
    g.add_argument("--slice-mb", type=float, default=32.0, help="plain files are tagged in slices of this size")


def run_cli(args) -> int:
    """`flaxner tag INPUT... --engine ray -o OUT_DIR`: refuse what the engine does not do, tag, print the summary."""
    inputs = args.input if isinstance(args.input, list) else [args.input]
    if not args.output:
        raise ValueError("--engine ray needs -o OUT_DIR (a folder every node can reach)")
    # the options this engine does not take were refused by cli.TAG_OPTIONS (engines without "r")
    if sys.modules.get("ray") is None and importlib.util.find_spec("ray") is None:  # before any work
        raise ValueError("--engine ray needs Ray: pip install 'flaxner[ray]'")
    if args.max_line_bytes is not None and args.max_line_bytes < 0:
        raise ValueError(f"--max-line-bytes {args.max_line_bytes}: must be 0 (no cap) or more")
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    summary = tag_files(inputs, args.model, args.output, join=args.join, address=args.address, resume=args.resume,
                        overwrite=args.overwrite, fmt=args.input_format, text_field=args.text_field,
                        id_field=args.id_field, output_format=args.format, model_version=spec_of(args).model_version,
                        keep_fields=args.keep_fields, slice_bytes=max(1, int(args.slice_mb * (1 << 20))),
                        max_line_bytes=MAX_LINE_BYTES if args.max_line_bytes is None else args.max_line_bytes,
                        actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                        progress=not args.no_progress, **overrides)
    summary.pop("tagged")
    print(json.dumps({"summary": summary}), file=sys.stderr)
    return 0
