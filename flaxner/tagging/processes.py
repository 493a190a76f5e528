"""`flaxner tag --processes N`: one machine, N tagging processes, one output in input order.

One process' Python work (parse, tokenize, window, aggregate, write) caps its throughput well below what a GPU can
tag (bench.tag_host). This runs N `flaxner tag --shard` children on consecutive slices of the input (slices of
`--shard I/M` when given: sub-shards I*N+k of M*N, which tile it exactly), each writing its own output with its own
resume point, then concatenates them in order. Interrupted or failed, the shard outputs stay: `--resume` with the
same N finishes the shards that are not complete and skips those that are. JAX's share of accelerator memory is
split between the children (XLA_PYTHON_CLIENT_MEM_FRACTION, unless set).

This parent imports no JAX. It holds the lock of the joined output, each child that of its shard (a second run on
the same output is refused); SIGINT/SIGTERM are passed on to the children, which commit and exit, and are waited
for; a parent killed outright takes its children with it (PR_SET_PDEATHSIG: they get SIGTERM and commit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from flaxner.tagging.formats import assemble_file, default_suffix, is_whole, spec_of
from flaxner.tagging.reading import TagInputError, parse_shard
from flaxner.tagging.summary import TagSummary
from flaxner.tagging.outpolicy import OutputLock, check_output, is_regular, open_new, open_own, refuse_inputs, \
    refuse_link
from flaxner.tagging.writing import default_output

_LOG_HEAD = b"flaxner tag: a shard's log\n"  # what proves a leftover log flaxner's own, so a rerun may replace it

def shard_output(output: str, k: int, n: int) -> Path:
    """Shard k of n's output (gzip, as a child writes it, when the output is .gz: gzip files concatenate)."""
    return Path(f"{output}.shard{k}of{n}" + (".gz" if output.endswith(".gz") else ""))


def child_env(n: int) -> dict:
    """The environment of one of `n` children on one machine: JAX's share of accelerator memory split between them
    (unless XLA_PYTHON_CLIENT_MEM_FRACTION is set already)."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.75, 0.9 / n):.3f}")
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL (Linux), so it commits and exits."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)


def child_command(args, child_args: list[str], out: Path, shard: str) -> list[str]:
    return [sys.executable, "-m", "flaxner.cli", "tag", args.input, "--model", args.model, "-o", str(out),
            "--shard", shard, "--no-progress", *child_args, "--resume" if args.resume else "--overwrite"]


def run_processes(args, child_args: list[str]) -> int:
    """Tag `args.input` with `args.processes` children, each given `child_args` (the options they share); returns
    the exit status. SIGINT/SIGTERM are passed on to the children (each commits), which are then waited for."""
    n = args.processes
    if args.input == "-":
        raise ValueError("--processes needs an input file, not stdin")
    i, m = parse_shard(args.shard)
    target = args.output or default_output(args.input, default_suffix(args.format))
    if is_whole(args.format):  # each child stages its records; the join writes the file from them
        child_args = [*child_args, "--staged"]
    base = target if target != "-" else str(Path(args.input).with_suffix("")) + ".stdout"
    outs = [shard_output(base, k, n) for k in range(n)]
    for out in outs:
        check_output(str(out), args.input)
        refuse_inputs(f"{out}.log", [args.input], "a shard's log", shown=out)
        refuse_link(f"{out}.log", "a shard's log")
    lock = OutputLock(target) if target != "-" else None  # one parent per output
    try:
        return _run(args, child_args, n, i, m, target, outs)
    finally:
        if lock is not None:
            lock.release()


def _run(args, child_args, n, i, m, target, outs) -> int:
    started = [out for out in outs if os.path.lexists(out) or os.path.lexists(f"{out}.part")]
    if args.resume and target != "-" and Path(target).is_file() and not started:
        raise ValueError(f"--resume: {target} is already complete")
    if not args.resume and not args.overwrite:
        if target != "-" and os.path.lexists(target):
            raise TagInputError(f"{target} exists; pass --overwrite to replace it")
        if target != "-" and os.path.lexists(f"{target}.part"):
            raise TagInputError(f"{target}.part: an interrupted run's output is there; pass --resume to continue "
                                f"it or --overwrite to start over")
        if started:
            raise TagInputError(f"{started[0]}: an interrupted run's shard is there; pass --resume to continue it "
                                f"or --overwrite to start over")
    for out in outs:  # before any child starts: a log there that flaxner cannot prove its own is the user's
        log = Path(f"{out}.log")
        finished = args.resume and out.is_file() and not Path(f"{out}.part").exists()
        if not finished and os.path.lexists(log) and not (is_regular(log) and _is_log(log)):
            raise TagInputError(f"{log}: a file flaxner cannot prove it wrote is there (no shard-log header); "
                                f"remove it and run again")
    env = child_env(n)
    procs: dict[int, subprocess.Popen] = {}
    logs: dict[int, Path] = {}
    stopped: list[int] = []

    def forward(signum, frame) -> None:
        stopped.append(signum)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # each child commits what it wrote and leaves its shard for --resume

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    try:
        for k, out in enumerate(outs):
            if stopped:
                break
            if args.resume and out.is_file() and not Path(f"{out}.part").exists():
                # finished before the interruption; its log is left if the parent was killed before reading it
                Path(f"{out}.log").unlink(missing_ok=True)
                continue
            logs[k] = Path(f"{out}.log")
            with open_new(logs[k], stale=_is_log) as log:  # the child's stderr: its summary, or why it failed
                log.write(_LOG_HEAD)
                log.flush()
                # its own session: a terminal's Ctrl-C reaches the parent only, which passes it on once
                procs[k] = subprocess.Popen(child_command(args, child_args, out, f"{i * n + k}/{m * n}"), env=env,
                                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        print(f"tag: {len(procs)} of {n} shard processes started ({n - len(procs)} already complete)",
              file=sys.stderr)
        summaries, failed = {}, {}
        for k, p in procs.items():
            p.wait()
            err = logs[k].read_bytes()[len(_LOG_HEAD):].decode(errors="replace")
            # a finished shard whose lines mostly lacked --text-field exits 1 with its summary: done, said below
            if p.returncode and not (p.returncode == 1 and _summary(err).get("field_missing")):
                failed[k] = (p.returncode, err.strip().splitlines()[-1] if err.strip() else "", logs[k])
            else:
                summaries[k] = _summary(err)
                logs[k].unlink()
                print(f"tag: shard {k + 1}/{n} done: {summaries[k].get('lines', '?')} lines", file=sys.stderr)
    finally:
        for p in procs.values():  # reaped whatever ends the wait (an exception here included)
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait()
        for s, h in old.items():
            signal.signal(s, h)
    if stopped:
        print(f"tag: interrupted by {signal.Signals(stopped[0]).name}: each shard committed what it wrote; run the "
              f"same command with --resume to continue", file=sys.stderr)
        return 128 + stopped[0]
    if failed:
        for k, (rc, last, log) in sorted(failed.items()):
            print(f"tag: shard {k + 1}/{n} failed (exit status {rc}): {last} (full log: {log})", file=sys.stderr)
        print(f"tag: the finished shards are kept; run again with --resume --processes {n} to finish",
              file=sys.stderr)
        return 1
    _concatenate(outs, target, spec_of(args) if is_whole(args.format) else None)
    seconds = time.perf_counter() - t0
    total = _joined_summary(list(summaries.values()), target, seconds, n)
    print(json.dumps({"summary": total}), file=sys.stderr)
    if "field_missing" in total:
        print(f"flaxner tag: error: {total['field_missing']} (in a shard of {n})", file=sys.stderr)
        return 1
    return 0


def _joined_summary(parts: list[dict], target: str, seconds: float, n: int) -> dict:
    """The shards' summaries as one, in the local engine's shape (`TagSummary`), plus `processes`. Counts cover the
    shards this run tagged (a resumed run's finished shards are not read again)."""
    def add(key: str) -> int:
        return sum(s.get(key, 0) for s in parts)

    tokens, lines = add("tokens"), add("lines")
    missing = [s["field_missing"] for s in parts if s.get("field_missing")]
    summary = TagSummary(
        lines=lines, errors=add("errors"), warnings=add("warnings"), entities=add("entities"), output=target,
        this_run={k: sum(s.get("this_run", {}).get(k, 0) for s in parts) for k in ("lines", "errors", "warnings",
                                                                                 "entities")},
        resumed_lines=add("resumed_lines"), seconds=round(seconds, 3), tokens=tokens,
        docs_per_s=round(lines / max(seconds, 1e-9), 1), tokens_per_s=round(tokens / max(seconds, 1e-9), 1),
        compiles=add("compiles"), shapes=sorted({tuple(x) for s in parts for x in s.get("shapes", [])}),
        long_docs=add("long_docs"), input_damaged=next((s["input_damaged"] for s in parts if s.get("input_damaged")),
                                                       None),
        # most shards: the corpus keeps its text under another key
        field_missing=missing[0] if len(missing) * 2 > len(parts) else None)
    return {**summary.to_json(), "processes": n}


def _summary(stderr: str) -> dict:
    for line in reversed(stderr.splitlines()):
        if line.startswith('{"summary"'):
            return json.loads(line)["summary"]
    return {}


def _is_log(path: Path) -> bool:
    with open_own(path) as f:
        return f.read(len(_LOG_HEAD)) == _LOG_HEAD


def _concatenate(parts: list[Path], target: str, spec=None) -> None:
    """The shard outputs in order into `target` (through a .part file and a rename), then remove them; with a
    whole-file format's `spec`, the file assembled from the shards' staged records."""
    if spec is not None:
        assemble_file(spec, parts, target)
    elif target == "-":
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        tmp = Path(f"{target}.part")
        # under the output's lock, with --resume or --overwrite (a fresh run refused one): an earlier run's, replaced
        with open_new(tmp, stale=lambda p: True) as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    for part in parts:
        part.unlink()
