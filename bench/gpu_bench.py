"""One-GPU benchmark (made for one H200, no network; runs on CPU at tiny sizes). Started by bench/gpu.sh.

Parts, each in its own process, in this order so that the goals come first when time runs short:
  train bfloat16  the seed recipe's shape: mBERT config (vocab 119,547, 12x768) with random weights, every
                  CoNLL-2003 train batch for 4 epochs plus the per-epoch evaluation, as `flaxner train` runs
                  it, each batch's sentences packed into rows of 128 (`--pack-length`, data.pack_length);
                  compile time, step time, epoch time, model FLOP utilisation against the measured bf16
                  matmul rate, wall time from process start to the last evaluation
  tag             flaxner's Tagger over a corpus of CoNLL sentences repeated, mixed with long documents
                  (1 million lines), windows packed into rows (tag.pack_length); sub-word tokens/s
  tag_sharded     the same corpus and model in N processes at once, each tagging one shard
                  (`flaxner tag --shard k/N`), sharing the GPU: one process' Python host work caps the tag part
                  (bench.tag_host measures it), N processes multiply it
  hf              the HF PyTorch token-classification pipeline on a slice of the same corpus
  train float32   the recipe again in fp32

    python -m bench.gpu_bench OUT_DIR                 # full size; figures in OUT_DIR/gpu_bench.json
    python -m bench.gpu_bench OUT_DIR --size tiny     # CPU smoke run (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()  # before the heavy imports: the recipe's wall clock starts here
PART_T0 = [T0]  # reset per part when all run in one process

from bench.common import (CompileCounter, bench_command, default_tokenizer, gpu_corpus,  # noqa: E402
                          header, markdown_table, median, peak_rss_mib, run_child, write_json)

SIZES = {  # config, overrides, keep the config's vocabulary size
    "mbert": ("mbert-conll2003", ["model.random_init=true", "train.eval_test=false"], True),
    "tiny": ("tiny", ["train.eval_test=false"], False),
}
TINY = {"epochs": 1, "tag_lines": 300, "hf_lines": 40, "long_every": 50, "long_sents": 40, "matmul_n": 256}


def load_cfg(args, dtype: str):
    from flaxner.config import load_config

    name, overrides, keep_vocab = SIZES[args.size]
    extra = [f"model.dtype={dtype}", "train.compilation_cache=", f"train.epochs={args.epochs}",
             f"train.compile_workers={args.compile_workers}", f"data.pack_length={args.pack_length}"]
    extra += [f"model.tokenizer={args.tokenizer}"] if args.size == "mbert" else []
    extra += [f"data.limit={args.limit}"] if args.limit else []
    return load_config(name, [*overrides, *extra]), keep_vocab


def matmul_rate(dtype: str, n: int) -> float:
    """Measured dense matmul rate in FLOP/s ([n, n] @ [n, n], median of 5 groups of 10)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.dtype(dtype))
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        outs = [f(a, b) for _ in range(10)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - t) / 10)
    return 2 * n**3 / median(times)


def train_flops(conf, batch: int, seq: int) -> float:
    """Model FLOPs of one training step on a [batch, seq] batch: 3x the forward matmuls (dense layers,
    attention scores and context, classifier); embedding lookups count nothing."""
    h, n_layers, inter = conf.hidden_size, conf.num_hidden_layers, conf.intermediate_size
    dense = n_layers * (4 * h * h + 2 * h * inter) + h * conf.num_labels
    forward = 2 * batch * seq * dense + n_layers * 4 * batch * seq * seq * h
    return 3.0 * forward


def part_train(args) -> None:
    """The seed recipe as `flaxner train` runs it (`build_run` and its `training_steps`), timed per epoch; figures
    go to args.json after each epoch."""
    import tempfile

    import jax

    from flaxner.precompile import Precompiler, workers_for
    from flaxner.training.step import TRAIN_STEP_NAMES
    from flaxner.training.train import StepEvent, build_run, training_steps

    counter = CompileCounter()
    cfg, keep_vocab = load_cfg(args, args.dtype)
    tc = cfg.train
    run_dir = Path(args.work or tempfile.mkdtemp(prefix="gpu_bench-")) / f"run-{args.dtype}"
    run = build_run(cfg, run_dir, overwrite=True, keep_model_vocab=keep_vocab)
    pre = Precompiler(workers_for(tc.compile_workers, run.rt.platform))
    spe, conf = run.plan.steps_per_epoch, run.train_model.config
    out = {"part": f"train_{args.dtype}", "dtype": args.dtype, "size": args.size, "devices": [str(d) for d in
           jax.devices()], "vocab_size": run.model.config.vocab_size, "steps_per_epoch": spe,
           "sentences": len(run.splits["train"].enc.input_ids), "load_s": time.perf_counter() - PART_T0[0],
           "epochs": [], "compile_workers": pre.workers,
           "pack_length": run.plan.pack_length}

    def start_epoch() -> dict:
        return {"snap": counter.snapshot(), "t": time.perf_counter(), "wait0": pre.waited_s, "steps": 0, "real": 0,
                "padded": 0, "flops": 0.0, "loss": []}

    ep = start_epoch()
    for ev in training_steps(run, pre):
        if isinstance(ev, StepEvent):
            ep["steps"] += 1
            ep["real"] += ev.tokens
            ep["padded"] += ev.rows * ev.seq  # packed batches: their rows of data.pack_length
            ep["flops"] += train_flops(conf, ev.rows, ev.seq)
            ep["loss"] = ev.losses or ep["loss"]
            if ev.batch == spe:  # the epoch's last step: its training time ends when the device is done
                jax.block_until_ready(ev.state)
                ep["train_s"], ep["wait_train"] = time.perf_counter() - ep["t"], pre.waited_s - ep["wait0"]
                ep["train_compiles"] = counter.since(ep["snap"], TRAIN_STEP_NAMES, background=False)
                ep["ahead"] = counter.since(ep["snap"], background=True)
                ep["eval_snap"], ep["t_ev"] = counter.snapshot(), time.perf_counter()
            continue
        eval_s = time.perf_counter() - ep["t_ev"]
        (n_train, c_train), ahead = ep["train_compiles"], ep["ahead"]
        n_eval, c_eval = counter.since(ep["eval_snap"], background=False)
        n_ahead, c_ahead = (a + b for a, b in zip(ahead, counter.since(ep["eval_snap"], background=True)))
        out["epochs"].append({"epoch": ev.epoch, "steps": ep["steps"], "train_s": ep["train_s"], "eval_s": eval_s,
                              "train_compiles": n_train, "train_compile_s": c_train, "eval_compiles": n_eval,
                              "eval_compile_s": c_eval, "ahead_compiles": n_ahead, "ahead_compile_s": c_ahead,
                              "compile_wait_train_s": ep["wait_train"],
                              "compile_wait_eval_s": pre.waited_s - ep["wait0"] - ep["wait_train"],
                              "real_tokens": ep["real"], "padded_tokens": ep["padded"], "flops": ep["flops"],
                              "loss": ep["loss"][-1] if ep["loss"] else None, "f1": ev.scores["f1"],
                              "eval_loss": ev.scores["loss"]})
        out["recipe_wall_s"] = time.perf_counter() - PART_T0[0]
        write_json(args.json, out)
        ep = start_epoch()
    run.ckpt.close()
    eps = out["epochs"]
    steady = eps[1:] or [dict(eps[0], train_s=eps[0]["train_s"] - eps[0]["train_compile_s"]
                              - eps[0]["compile_wait_train_s"])]
    compute_s = sum(e["train_s"] for e in steady)
    out.update(compile_count=sum(e["train_compiles"] + e["eval_compiles"] + e["ahead_compiles"] for e in eps),
               compile_s=sum(e["train_compile_s"] + e["eval_compile_s"] + e["ahead_compile_s"] for e in eps),
               compile_blocking_s=sum(e["train_compile_s"] + e["eval_compile_s"] + e["compile_wait_train_s"]
                                      + e["compile_wait_eval_s"] for e in eps),
               step_s=median([e["train_s"] / e["steps"] for e in steady]),
               epoch_s=median([e["train_s"] for e in steady]), eval_s=median([e["eval_s"] for e in eps[1:] or eps]),
               real_tok_s=sum(e["real_tokens"] for e in steady) / compute_s,
               padding=1 - sum(e["real_tokens"] for e in eps) / sum(e["padded_tokens"] for e in eps),
               model_flop_s=sum(e["flops"] for e in steady) / compute_s, final_f1=eps[-1]["f1"])
    out["bf16_matmul_flop_s"] = matmul_rate("bfloat16", args.matmul_n)
    out["mfu"] = out["model_flop_s"] / out["bf16_matmul_flop_s"]
    if args.save_model:  # the tag and hf parts tag with this model
        from flaxner.training.export import save_model

        save_model(run.model, run.export_params(run.state["params"]), run.tokenizer, Path(args.save_model))
    out["peak_rss_mib"] = peak_rss_mib()
    write_json(args.json, out)


def count_tokens(tok, texts: list[str]) -> int:
    """Sub-word tokens of the texts, specials not counted (what a tokens/s figure divides)."""
    return sum(len(x) for i in range(0, len(texts), 10000)
               for x in tok(texts[i:i + 10000], add_special_tokens=False)["input_ids"])


def ensure_model(args, model_dir: Path) -> str:
    """The model the tag/hf parts run: the one a train part saved, or a random one of the same shape."""
    if (model_dir / "config.json").is_file():
        return "trained"
    from flaxner.training.export import save_model
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import make_model, make_tokenizer

    cfg, keep_vocab = load_cfg(args, "float32")
    tok = make_tokenizer(cfg.model)
    model, params = make_model(cfg.model, CONLL_LABELS, seed=0, vocab_size=None if keep_vocab else len(tok))
    save_model(model, params, tok, model_dir)
    return "random"


def part_tag(args) -> None:
    out = {"part": "tag", "lines": args.tag_lines}
    try:
        from flaxner.config import TagConfig
        from flaxner.tagging.tagger import Tagger
    except ImportError as e:  # the tagger is optional for the rest of the benchmark
        write_json(args.json, {**out, "error": f"flaxner.tagging.tagger unavailable: {e}"})
        return
    counter = CompileCounter()
    model_dir = Path(args.work) / "model"
    out["weights"] = ensure_model(args, model_dir)
    texts = gpu_corpus(args.tag_lines, args.long_every, args.long_sents)
    corpus = Path(args.work) / "corpus.jsonl"
    with corpus.open("w") as f:
        f.writelines(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts))
    fields = {f.name for f in dataclasses.fields(TagConfig)}
    overrides = {k: v for k, v in (("dtype", args.tag_dtype), ("compilation_cache", ""),
                                   ("batch_tokens", args.tag_batch_tokens)) if k in fields and v}
    tagger = Tagger.from_pretrained(str(model_dir), **overrides)
    out.update(tokens=count_tokens(_tok(model_dir), texts),
               long_docs=args.tag_lines // args.long_every if args.long_every else 0, settings=overrides)
    long_docs = texts[args.long_every - 1::args.long_every] if args.long_every else []
    warm = texts[:args.tag_warmup] + long_docs[:64]
    snap, t = counter.snapshot(), time.perf_counter()
    tagger.tag(warm)
    tagger.precompile(b for _, b in tagger.shapes)  # the small tail-batch twins of the shapes seen
    out.update(warmup_s=time.perf_counter() - t, warmup_compiles=counter.since(snap)[0])
    times, summaries = [], []
    snap = counter.snapshot()
    for _ in range(args.tag_repeats):
        t = time.perf_counter()
        summaries.append(tagger.tag_file(str(corpus), str(Path(args.work) / "tagged.jsonl"), progress=False,
                                         overwrite=True))
        times.append(time.perf_counter() - t)
    out.update(wall_s=times, median_s=median(times), tok_s=out["tokens"] / median(times),
               lines_s=args.tag_lines / median(times), compiles_in_runs=counter.since(snap)[0],
               tagger_summary=summaries[-1].to_json(), peak_rss_mib=peak_rss_mib())
    write_json(args.json, out)


def _tok(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def part_hf(args) -> None:
    """HF's token-classification pipeline (PyTorch) on the first --hf-lines lines of the same corpus."""
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification, pipeline

    model_dir = Path(args.work) / "model"
    out = {"part": "hf", "weights": ensure_model(args, model_dir)}
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and args.tag_dtype in ("auto", "bfloat16") else torch.float32
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.model_max_length = 512
    model = BertForTokenClassification.from_pretrained(str(model_dir))  # the export's model.safetensors
    model = model.to("cuda" if cuda else "cpu", dtype).eval()
    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="first", stride=128,
                    device=0 if cuda else -1, batch_size=args.hf_batch)
    texts = gpu_corpus(args.hf_lines, args.long_every, args.long_sents)  # the tag corpus' first lines
    out.update(lines=len(texts), tokens=count_tokens(tok, texts), dtype=str(dtype), batch_size=args.hf_batch)
    pipe(texts[:args.hf_batch])
    times = []
    for _ in range(args.hf_repeats):
        t = time.perf_counter()
        pipe(texts)
        times.append(time.perf_counter() - t)
    out.update(wall_s=times, median_s=median(times), tok_s=out["tokens"] / median(times),
               lines_s=len(texts) / median(times), peak_rss_mib=peak_rss_mib())
    write_json(args.json, out)


def part_tag_sharded(args, timeout: float) -> dict:
    """The tag part again in --tag-processes processes, one shard each (bench.tag_host), started together once
    all are warm; JAX's share of GPU memory is split between them as `flaxner tag --processes` splits it."""
    from bench.tag_host import run_sharded  # imported here: the parts' own processes do not need it

    corpus, model_dir = Path(args.work) / "corpus.jsonl", Path(args.work) / "model"
    if not corpus.is_file() or not (model_dir / "config.json").is_file():
        return {"error": "no corpus or model: the tag part did not run"}
    out = run_sharded(str(model_dir), corpus, args.tag_processes, Path(args.work) / "sharded", stand_in=False,
                      batch_tokens=args.tag_batch_tokens, timeout=timeout)
    write_json(args.json, out)
    return out


def report(res: dict) -> dict:
    """Print the tables; return the goal checks."""
    rows = [dict(r, part=k) for k, r in res.items() if k.startswith("train") and "step_s" in r]
    if rows:
        print("\n## Training: the seed recipe's shape, every epoch evaluated\n")
        print(markdown_table(rows, [("part", "run", ""), ("recipe_wall_s", "wall to last eval s", ".1f"),
                                    ("load_s", "load s", ".1f"), ("compile_count", "compiles", "d"),
                                    ("compile_s", "compile s (all threads)", ".1f"),
                                    ("compile_blocking_s", "compile s (blocking)", ".1f"),
                                    ("compile_workers", "compile threads", "d"), ("step_s", "step s", ".4f"),
                                    ("epoch_s", "epoch s", ".1f"), ("eval_s", "eval s", ".1f"),
                                    ("real_tok_s", "real tok/s", ",.0f"), ("mfu", "MFU", ".1%"),
                                    ("final_f1", "F1 (random init)", ".3f")]))
    tag, hf = res.get("tag", {}), res.get("hf", {})
    sharded = res.get("tag_sharded", {})
    rows = [dict(r, part=k) for k, r in (("flaxner Tagger", tag),
                                         (f"flaxner Tagger, {sharded.get('processes')} processes", sharded),
                                         ("HF pipeline", hf)) if "tok_s" in r]
    if rows:
        print("\n## Tagging\n")
        print(markdown_table(rows, [("part", "tagger", ""), ("lines", "lines", ",d"), ("tokens", "sub-words", ",d"),
                                    ("median_s", "s", ".1f"), ("tok_s", "sub-words/s", ",.0f"),
                                    ("lines_s", "lines/s", ",.0f")]))
    goals = {}
    if "recipe_wall_s" in res.get("train_bfloat16", {}) and len(res["train_bfloat16"].get("epochs", [])) >= 4:
        goals["seed_recipe_bf16_under_120s"] = res["train_bfloat16"]["recipe_wall_s"] < 120
    if "tok_s" in tag:
        goals["tagging_at_least_1M_tok_s"] = tag["tok_s"] >= 1e6
    if "tok_s" in sharded:
        goals["tagging_sharded_at_least_1M_tok_s"] = sharded["tok_s"] >= 1e6
    if "tok_s" in tag and "tok_s" in hf:
        goals["tagger_over_hf_pipeline"] = tag["tok_s"] / hf["tok_s"]
    print("\ngoals: " + json.dumps(goals))
    return goals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for gpu_bench.json (and one JSON per part)")
    p.add_argument("--size", choices=sorted(SIZES), default="mbert")
    p.add_argument("--parts", default="train,tag,hf", help="comma-separated subset of train,tag,hf")
    p.add_argument("--dtypes", default="bfloat16,float32", help="train runs, in order (the first saves the model)")
    p.add_argument("--epochs", type=int, default=0, help="default 4 (tiny: 1)")
    p.add_argument("--pack-length", type=int, default=128,
                   help="data.pack_length of the train parts: each batch's sentences packed into rows of this "
                        "length (issue 25; 0: a row per sentence, padded to the fitted lengths)")
    p.add_argument("--limit", type=int, default=0, help="training sentences per split (default all)")
    p.add_argument("--compile-workers", type=int, default=-1,
                   help="train.compile_workers: threads compiling shapes ahead (-1: auto, up to 8 on a GPU)")
    p.add_argument("--tokenizer", default="", help="tokenizer folder (default .whl/minilm-tokenizer or minilm)")
    p.add_argument("--tag-lines", type=int, default=0, help="corpus lines (default 1,000,000; tiny 300)")
    p.add_argument("--long-every", type=int, default=0, help="every Nth line a long document (default 200)")
    p.add_argument("--long-sents", type=int, default=0, help="sentences per long document (default 60)")
    p.add_argument("--tag-dtype", default="auto", help="Tagger dtype (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--tag-batch-tokens", type=int, default=0,
                   help="padded tokens per tagging batch (default: 65536, the TagConfig default at --size tiny)")
    p.add_argument("--tag-warmup", type=int, default=2000, help="lines tagged before timing (compiles)")
    p.add_argument("--tag-repeats", type=int, default=1)
    p.add_argument("--tag-processes", type=int, default=-1,
                   help="processes of the tag_sharded part (-1: 4, tiny 2; 0 or 1: not run)")
    p.add_argument("--hf-lines", type=int, default=0, help="pipeline slice (default 20,000; tiny 40)")
    p.add_argument("--hf-batch", type=int, default=64)
    p.add_argument("--hf-repeats", type=int, default=1)
    p.add_argument("--matmul-n", type=int, default=0, help="matmul size for the peak rate (default 8192)")
    p.add_argument("--deadline-s", type=float, default=540, help="stop starting parts after this; kill at it")
    p.add_argument("--in-process", action="store_true", help="all parts in this process (CPU smoke tests)")
    p.add_argument("--work", default="", help="scratch folder for the model and corpus, kept (default a temp "
                   "dir, removed)")
    p.add_argument("--part", choices=["train", "tag", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--save-model", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tiny = args.size == "tiny"
    for key, full in (("epochs", 4), ("tag_lines", 1_000_000), ("hf_lines", 20_000), ("long_every", 200),
                      ("long_sents", 60), ("matmul_n", 8192)):
        if not getattr(args, key):
            setattr(args, key, TINY[key] if tiny else full)
    args.tokenizer = args.tokenizer or default_tokenizer()
    if not args.tag_batch_tokens and not tiny:
        args.tag_batch_tokens = 65536  # a GPU wants far larger batches than the CPU default
    if args.part:
        {"train": part_train, "tag": part_tag, "hf": part_hf}[args.part](args)
        return 0

    info = header()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_bench-"))
    parts = args.parts.split(",")
    dtypes = args.dtypes.split(",") if "train" in parts else []
    plan = [("train", dtypes[0])] if dtypes else []
    if args.tag_processes < 0:
        args.tag_processes = 2 if tiny else 4
    plan += [("tag", "")] if "tag" in parts else []
    plan += [("tag_sharded", "")] if "tag" in parts and args.tag_processes > 1 else []
    plan += [("hf", "")] if "hf" in parts else []
    plan += [("train", d) for d in dtypes[1:]]
    res: dict[str, dict] = {}
    for i, (part, dtype) in enumerate(plan):
        key = f"train_{dtype}" if dtype else part
        left = args.deadline_s - (time.perf_counter() - T0)
        if left < 20:
            res[key] = {"error": f"skipped: {left:.0f} s left of --deadline-s"}
            continue
        sub = argparse.Namespace(**{**vars(args), "part": part, "dtype": dtype or "bfloat16", "work": str(work),
                                    "json": str(out_dir / f"{key}.json"),
                                    "save_model": str(work / "model") if i == 0 and part == "train" else ""})
        if part == "tag_sharded":  # its own children either way
            res[key] = part_tag_sharded(sub, timeout=left - 5)
            continue
        if args.in_process:
            t = PART_T0[0] = time.perf_counter()
            {"train": part_train, "tag": part_tag, "hf": part_hf}[part](sub)
            res[key] = dict(json.loads(Path(sub.json).read_text()), wall_s=time.perf_counter() - t)
            continue
        cmd = bench_command("gpu_bench", args.out, "--part", part, "--json", sub.json)
        for k, v in vars(sub).items():
            if k not in ("out", "part", "json", "in_process") and v not in ("", None, False):
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        # JAX preallocates most of the GPU; the PyTorch part (which imports flax to convert weights) must not.
        env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_PLATFORMS": "cpu"} if part == "hf" else {}
        res[key] = run_child(cmd, sub.json, timeout=left - 5, env=env)
    if not args.work:  # the model and corpus are large; keep them only where asked to
        shutil.rmtree(work, ignore_errors=True)
    goals = report(res)
    write_json(out_dir / "gpu_bench.json", {**info, "args": {k: v for k, v in vars(args).items()
                                                             if k not in ("part", "json", "save_model")},
                                            "parts": res, "goals": goals, "total_s": time.perf_counter() - T0})
    print(f"\nfigures: {out_dir / 'gpu_bench.json'}  ({time.perf_counter() - T0:.0f} s)")
    return 1 if any("error" in r for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
