"""`flaxner tag --engine ray` against `flaxner tag` on the same machine, same corpus, same model, same run.

Both run the whole command in a fresh process (`python -m flaxner.cli tag ...`), model load and compiles included,
once to warm the persistent compile cache, then timed:
  local   `flaxner tag corpus.jsonl -o out.jsonl` (one process)
  ray     `flaxner tag 'shards/*.jsonl' --engine ray -o out/ --join all.jsonl` on a local Ray (started by the
          command, or `--address` for a running cluster), the same corpus split into `--shards` files
Throughput: the corpus' sub-word tokens (the summaries' `tokens`) over wall seconds, and over the tagging
seconds each summary reports. The joined output is checked equal to the local one (ids, spans, labels).

    python -m bench.ray_tag --model minilm --lines 2000
    python -m bench.ray_tag --model tiny --lines 2000 --shards 4      # a quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import header, write_json
from bench.tag_speed import export_model, make_corpus


def run(cmd: list[str]) -> tuple[float, dict]:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"failed ({p.returncode}):\n{p.stderr[-4000:]}")
    pool = [x for x in p.stderr.splitlines() if x.startswith("tag: ray pool")]
    print("\n".join(pool), flush=True)
    summary = json.loads(next(x for x in reversed(p.stderr.splitlines()) if x.startswith('{"summary"')))["summary"]
    return wall, summary


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ray_tag", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("minilm", "mbert", "tiny"), default="minilm")
    p.add_argument("--lines", type=int, default=2000)
    p.add_argument("--shards", type=int, default=4, help="files the corpus is split into for the ray engine")
    p.add_argument("--address", default=None, help="a running Ray cluster (default: the command starts one)")
    p.add_argument("--actors", type=int, default=None)
    p.add_argument("--json", default="bench/out/ray_tag.json")
    args = p.parse_args()
    info = header()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        export_model(args.model, model)
        corpus = tmp / "corpus.jsonl"
        make_corpus(corpus, args.lines, 0.02)
        lines = corpus.read_bytes().splitlines(keepends=True)
        (tmp / "shards").mkdir()
        for k in range(args.shards):
            (tmp / "shards" / f"{k:03d}.jsonl").write_bytes(
                b"".join(lines[len(lines) * k // args.shards:len(lines) * (k + 1) // args.shards]))
        base = [sys.executable, "-m", "flaxner.cli", "tag", "--model", str(model), "--no-progress"]
        local_cmd = base + [str(corpus), "-o", str(tmp / "local.jsonl")]
        ray_cmd = base + [str(tmp / "shards" / "*.jsonl"), "--engine", "ray", "-o", str(tmp / "ray"),
                          "--join", str(tmp / "ray.jsonl")]
        ray_cmd += ["--address", args.address] if args.address else []
        ray_cmd += ["--actors", str(args.actors)] if args.actors else []
        run(local_cmd)  # warm the compile cache for both
        results = {}
        for name, cmd in (("local", local_cmd), ("ray", ray_cmd)):
            wall, s = run(cmd)
            results[name] = {"wall_s": round(wall, 2), "tokens": s["tokens"], "summary_s": s["seconds"],
                             "tok_per_s_wall": round(s["tokens"] / wall, 1),
                             "tok_per_s_tagging": round(s["tokens"] / s["seconds"], 1),
                             **({"pool": {k: s["pool"][k] for k in ("actors", "num_cpus", "num_gpus", "nodes")}}
                                if name == "ray" else {})}
            print(json.dumps({name: results[name]}), flush=True)
        local = [json.loads(x) for x in (tmp / "local.jsonl").read_text().splitlines()]
        joined = [json.loads(x) for x in (tmp / "ray.jsonl").read_text().splitlines()]
        same = [(a["id"], [(e["start"], e["end"], e["label"]) for e in a["entities"]]) for a in local] == \
               [(b["id"], [(e["start"], e["end"], e["label"]) for e in b["entities"]]) for b in joined]
    ratio = results["ray"]["tok_per_s_wall"] / results["local"]["tok_per_s_wall"]
    print(f"ray/local sub-words/s (wall): {ratio:.2f}; outputs equal: {same}")
    write_json(args.json, {**info, "args": vars(args), "results": results, "ratio_wall": round(ratio, 3),
                           "outputs_equal": same})


if __name__ == "__main__":
    main()
