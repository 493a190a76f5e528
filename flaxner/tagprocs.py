"""`flaxner tag --processes N`: one machine, N tagging processes, one output in input order.

One process' Python work (parse, tokenize, window, aggregate, write) caps its throughput well below what a GPU can
tag (bench/tag_host.py). This runs N `flaxner tag --shard` children on consecutive slices of the input (slices of
`--shard I/M` when given: sub-shards I*N+k of M*N, which tile it exactly), each writing its own output with its own
resume point, then concatenates them in order. Interrupted or failed, the shard outputs stay: `--resume` with the
same N finishes the shards that are not complete and skips those that are. JAX's share of accelerator memory is
split between the children (XLA_PYTHON_CLIENT_MEM_FRACTION, unless set).
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

from flaxner.tagio import default_output, parse_shard

# options passed through to every child as given (None / False: left out)
PASS = ("text_field", "id_field", "format", "aggregation", "max_length", "stride", "batch_size", "batch_tokens",
        "lookahead", "dtype", "words", "on_error")
FLAGS = ("keep_fields",)


def shard_output(output: str, k: int, n: int) -> Path:
    return Path(f"{output}.shard{k}of{n}")


def child_env(n: int) -> dict:
    """The environment of one of `n` children on one machine: JAX's share of accelerator memory split between them
    (unless XLA_PYTHON_CLIENT_MEM_FRACTION is set already)."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.75, 0.9 / n):.3f}")
    return env


def run_processes(args) -> int:
    """Tag `args.input` with `args.processes` children; returns the exit status."""
    n = args.processes
    if args.input == "-":
        raise ValueError("--processes needs an input file, not stdin")
    i, m = parse_shard(args.shard)
    target = args.output or default_output(args.input)
    base = target if target != "-" else str(Path(args.input).with_suffix("")) + ".stdout"
    if args.resume and target != "-" and Path(target).is_file() and not any(
            shard_output(base, k, n).exists() or Path(f"{shard_output(base, k, n)}.part").exists()
            for k in range(n)):
        raise ValueError(f"--resume: {target} is already complete")
    env = child_env(n)
    procs: dict[int, subprocess.Popen] = {}
    logs: dict[int, Path] = {}
    t0 = time.perf_counter()
    for k in range(n):
        out = shard_output(base, k, n)
        if args.resume and out.is_file() and not Path(f"{out}.part").exists():
            continue  # finished before the interruption
        cmd = [sys.executable, "-m", "flaxner.cli", "tag", args.input, "--model", args.model, "-o", str(out),
               "--shard", f"{i * n + k}/{m * n}", "--no-progress"]
        for name in PASS:
            value = getattr(args, name, None)
            if value is not None:
                cmd += [f"--{name.replace('_', '-')}", str(value)]
        cmd += [f"--{name.replace('_', '-')}" for name in FLAGS if getattr(args, name, False)]
        cmd += ["--resume"] if args.resume else []
        logs[k] = Path(f"{out}.log")
        with logs[k].open("w") as log:  # the child's stderr: its summary, or why it failed
            procs[k] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    print(f"tag: {len(procs)} of {n} shard processes started ({n - len(procs)} already complete)", file=sys.stderr)
    summaries, failed = {}, {}
    try:
        for k, p in procs.items():
            p.wait()
            err = logs[k].read_text(errors="replace")
            if p.returncode:
                failed[k] = (p.returncode, err.strip().splitlines()[-1] if err.strip() else "", logs[k])
            else:
                summaries[k] = _summary(err)
                logs[k].unlink()
                print(f"tag: shard {k + 1}/{n} done: {summaries[k].get('lines', '?')} lines", file=sys.stderr)
    except BaseException:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # each child commits what it wrote and leaves its shard for --resume
        for p in procs.values():
            p.wait()
        raise
    if failed:
        for k, (rc, last, log) in sorted(failed.items()):
            print(f"tag: shard {k + 1}/{n} failed (exit status {rc}): {last} (full log: {log})", file=sys.stderr)
        print(f"tag: the finished shards are kept; run again with --resume --processes {n} to finish",
              file=sys.stderr)
        return 1
    _concatenate([shard_output(base, k, n) for k in range(n)], target)
    seconds = time.perf_counter() - t0
    total = {key: sum(s.get(key, 0) for s in summaries.values())
             for key in ("lines", "errors", "warnings", "entities", "tokens", "long_docs")}
    total.update(output=target, processes=n, seconds=round(seconds, 3),
                 docs_per_s=round(total["lines"] / max(seconds, 1e-9), 1),
                 tokens_per_s=round(total["tokens"] / max(seconds, 1e-9), 1))
    print(json.dumps({"summary": total}), file=sys.stderr)
    return 0


def _summary(stderr: str) -> dict:
    for line in reversed(stderr.splitlines()):
        if line.startswith('{"summary"'):
            return json.loads(line)["summary"]
    return {}


def _concatenate(parts: list[Path], target: str) -> None:
    """The shard outputs in order into `target` (through a .part file and a rename), then remove them."""
    if target == "-":
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        tmp = Path(f"{target}.part")
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    for part in parts:
        part.unlink()
