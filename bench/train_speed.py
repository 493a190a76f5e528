"""Training throughput: flaxner's train step against the PyTorch step of the HF Trainer, on the same sentences.

Contenders, each in its own process (they would fight over the cores and the allocator otherwise):
  a  flaxner: the train step of `flaxner.training.train.build_run` on fixed-shape bucketed batches, grouped by length, as
     `flaxner train` runs it; with `--pack-length N`, each batch's sentences packed into rows of N (data.pack_length)
  b  PyTorch BertForTokenClassification + the Trainer's AdamW, linear schedule and clipping, random batches with
     dynamic padding (DataCollatorForTokenClassification): the HF Trainer's defaults, as the seed model was made
  c  the same PyTorch step on length-grouped batches (the Trainer's group_by_length)

Each contender times `--steps` batches of CoNLL-2003 train drawn at random from the batches of its own epoch
(`--draw epoch`, the default): flaxner's fitted, grouped epoch, the Trainer's random (b) or grouped (c) one, so each
sample pads as its training run does. `--draw sentences` gives all three the same `--steps` x batch sentences,
batched by each contender's rule within that sample (which pads a grouped contender more than its epoch would:
50 batches are grouped at a time in a run). Each warms up (for a: one step per bucket shape, which compiles), then
runs `--repeats` timed passes over its batches; figures are medians.

    python -m bench.train_speed --model minilm
    python -m bench.train_speed --model minilm --pack-length 128   # (a) on packed rows
    python -m bench.train_speed --model mbert        # mBERT shape (vocab 119,547, 12x768), random weights
    python -m bench.train_speed --model distilbert-base-cased       # other families: their base shape, random
    python -m bench.train_speed --model electra-base-discriminator  # weights, the MiniLM tokenizer
    python -m bench.train_speed --model ModernBERT-base   # ModernBERT-base shape (22 layers, 8,192 positions), random
    python -m bench.train_speed --model deberta-v3-base   # DeBERTa-v3-base shape (vocab 128,100), random weights
    python -m bench.train_speed --model distilbert-base-cased --torch-bf16 model.dtype=mixed   # both in bf16

On a machine with a GPU both contenders run on it: flaxner on JAX's default backend, PyTorch on `cuda` (as the
Trainer would), each step timed to the end of its queued work. Compare there in bf16 on both sides (`--torch-bf16
model.dtype=mixed`): JAX's float32 products on a GPU default to TF32, PyTorch's to full float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (TORCH_ENV, CompileCounter, bench_command, header, markdown_table, malloc_status, median,
                          peak_rss_mib, run_child, write_json)



def _random_weights(name: str, keep_vocab: bool) -> tuple[str, list[str], bool]:
    """A hub model's shape (its config shipped in flaxner/resources/configs) with random weights and the MiniLM
    tokenizer (the real vocabulary is not available offline)."""
    return ("minilm-conll2003", [f"model.name={name}", "model.random_init=true", "model.from_pt=false",
                                 "model.tokenizer=minilm"], keep_vocab)


# config, overrides, keep the config's vocabulary (mBERT: 119,547 rows although the MiniLM tokenizer uses 30,522;
# DistilBERT-cased's 28,996 are fewer than the tokenizer's ids, so the tokenizer's size is built)
MODELS = {
    "minilm": ("minilm-conll2003", [], False),
    "mbert": _random_weights("bert-base-multilingual-cased", True),
    "distilbert-base-cased": _random_weights("distilbert-base-cased", False),
    "electra-base-discriminator": _random_weights("google/electra-base-discriminator", True),
    "tiny": ("tiny", [], False),
    # ModernBERT-base's shape (flaxner/resources/configs), random weights; MiniLM's WordPiece ids fit its table
    "ModernBERT-base": ("minilm-conll2003", ["model.name=answerdotai/ModernBERT-base", "model.random_init=true",
                                             "model.from_pt=false", "model.tokenizer=minilm"], True),
    # DeBERTa-v3-base's shape (flaxner/resources/configs/deberta-v3-base.json), random weights, MiniLM's tokenizer
    "deberta-v3-base": ("minilm-conll2003", ["model.name=deberta-v3-base", "model.random_init=true",
                                             "model.from_pt=false", "model.tokenizer=minilm"], True),
}
DEFAULT_STEPS = {"minilm": 50, "mbert": 20, "distilbert-base-cased": 20, "electra-base-discriminator": 20,
                 "ModernBERT-base": 20, "deberta-v3-base": 20, "tiny": 3}
CONTENDERS = {"a": "flaxner (bucketed, grouped)", "b": "PyTorch + HF Trainer step (random, dynamic pad)",
              "c": "PyTorch + HF Trainer step (grouped, dynamic pad)"}


def load(args):
    """Config, tokenizer, encoded train split, the chosen sentences and the vocabulary size to build."""
    from flaxner.config import load_config
    from flaxner.data.splits import encode, load_split
    from flaxner.models.loading import make_tokenizer

    name, overrides, keep_vocab = MODELS[args.model]
    cfg = load_config(args.config or name, [*overrides, f"train.batch_size={args.batch_size}",
                                            f"train.compilation_cache={args.compile_cache}", *args.overrides])
    tok = make_tokenizer(cfg.model)
    enc = encode(load_split(cfg.data, cfg.data.train_split), tok, cfg.data)
    n = args.steps * args.batch_size
    perm = np.random.default_rng(args.seed).permutation(len(enc.input_ids))
    subset = np.resize(perm, n)  # wraps around when the split is smaller than n (tiny runs)
    return cfg, tok, enc, subset, None if keep_vocab else len(tok)


def order(enc, subset, batch_size: int, seed: int, mode: str) -> list[np.ndarray]:
    """Batches (row indices of `enc`) over the chosen sentences, as `flaxner.data.batching.batch_order` draws them."""
    from flaxner.data.batching import batch_order

    return [subset[b] for b in batch_order(enc.lengths[subset], batch_size, seed, 0, mode)]


def draw(args, enc, subset, batch_size: int, seed: int, mode: str) -> list[np.ndarray]:
    """The timed batches (row indices of `enc`): `--draw sentences` batches the drawn sentences (`order`);
    `--draw epoch` picks `--steps` of the full batches of the whole epoch `batch_order` makes (at random, by
    `--seed`; repeated when the epoch has fewer)."""
    if args.draw == "sentences":
        return order(enc, subset, batch_size, seed, mode)
    from flaxner.data.batching import batch_order

    epoch = batch_order(enc.lengths, batch_size, seed, 0, mode)
    full = [b for b in epoch if len(b) == batch_size] or epoch
    pick = np.resize(np.random.default_rng(args.seed).permutation(len(full)), args.steps)
    return [full[i] for i in pick]


def sample_size(enc, batches: list[np.ndarray]) -> dict:
    """The timed batches' sentences and real (non-pad) tokens."""
    return {"sentences": int(sum(len(b) for b in batches)),
            "real_tokens": int(sum(enc.lengths[b].sum() for b in batches))}


def epoch_padding(enc, batch_size: int, seed: int, mode: str, buckets=None) -> float:
    """Share of padding over one whole epoch of the full split (context for the sample's figure)."""
    from flaxner.data.batching import batch_order, bucket_for

    lengths = enc.lengths
    real = padded = 0
    for idx in batch_order(lengths, batch_size, seed, 0, mode):
        longest = int(lengths[idx].max())
        real += int(lengths[idx].sum())
        padded += (batch_size if buckets else len(idx)) * (bucket_for(longest, buckets) if buckets else longest)
    return 1 - real / padded


def run_flaxner(args, cfg, tok, enc, subset, vocab) -> dict:
    """flaxner's step as `flaxner train` sets it up (`build_run`: every split for the compact vocabulary, the
    run's fitted buckets, the loss denominator), timed over the drawn batches instead of an epoch."""
    import dataclasses

    import jax

    from flaxner.training.step import TRAIN_STEP_NAMES
    from flaxner.training.train import build_run

    counter = CompileCounter()
    # the schedule of a --total-steps run, as before; no test split, no checkpoints (nothing saves them)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=args.total_steps,
                                                             eval_test=False))
    if args.pack_length is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pack_length=args.pack_length))
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(cfg, Path(tmp) / "run", keep_model_vocab=vocab is None)
        run.ckpt.close()
    tc, rt, step_fn, pad_id, plan = cfg.train, run.rt, run.step_fn, run.pad_id, run.plan
    enc = run.splits["train"].enc  # the same rows as the caller's, in the compact vocabulary
    batches = draw(args, enc, subset, tc.batch_size, tc.seed, tc.batching)
    state = run.state
    del run

    def one_pass(idx_list) -> list[float]:
        losses, pending = [], []
        for idx in idx_list:
            batch = plan.collate(enc, idx, pad_id)  # padded or packed as `flaxner train` does
            state_box[0], m = step_fn(state_box[0], rt.put(batch))
            pending.append(m)
            if len(pending) >= tc.log_every:  # `flaxner train` reads the losses back this often
                losses += [float(x["loss"]) for x in pending]
                pending.clear()
        losses += [float(x["loss"]) for x in pending]
        jax.block_until_ready(state_box[0])
        return losses

    state_box = [state]
    first_of_shape, padded = {}, 0
    for idx in batches:
        batch = plan.collate(enc, idx, pad_id)
        first_of_shape.setdefault(plan.shape_of(batch), idx)
        padded += batch["input_ids"].size
    snap = counter.snapshot()
    t0 = time.perf_counter()
    one_pass(list(first_of_shape.values()))
    warm_s = time.perf_counter() - t0
    n_compiles, compile_s = counter.since(snap, TRAIN_STEP_NAMES)
    snap = counter.snapshot()
    times, losses = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        losses = one_pass(batches)
        times.append(time.perf_counter() - t0)
    # shapes: padded lengths, or (rows, row length) of packed batches
    return {"pass_s": times, "padded_tokens": padded, "warmup_s": warm_s, "compile_count": n_compiles,
            "compile_s": compile_s, "recompiles_in_passes": counter.since(snap)[0],
            **sample_size(enc, batches),
            "shapes": sorted(first_of_shape), "buckets": list(plan.buckets), "pack_length": plan.pack_length,
            "last_loss": losses[-1], "epoch_padding": plan.padding_stats(enc.lengths)["padding"]
            if plan.pack_length else epoch_padding(enc, tc.batch_size, tc.seed, tc.batching, plan.buckets),
            "devices": [str(d) for d in jax.devices()]}


def torch_model(cfg, vocab, names=None):
    """The family's PyTorch `...ForTokenClassification` from the same folder as flaxner (or the same random shape),
    with a classifier for `names` (default CoNLL-2003's labels)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import base_config, resolve_name

    names = list(names or CONLL_LABELS)
    labels = {"id2label": dict(enumerate(names)), "label2id": {t: i for i, t in enumerate(names)}}
    name = resolve_name(cfg.model.name)
    if not cfg.model.random_init:
        return AutoModelForTokenClassification.from_pretrained(name, num_labels=len(names), **labels)
    # flaxner's configs are frozen: change the shape on a copy, then give transformers its config.json dict
    shape = {attr: getattr(cfg.model, field) for field, attr in (
        ("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
        ("intermediate_size", "intermediate_size")) if getattr(cfg.model, field)}
    if vocab:
        shape["vocab_size"] = vocab
    d = base_config(name).replace(labels=tuple(names), **shape).to_dict()
    return AutoModelForTokenClassification.from_config(AutoConfig.for_model(d.pop("model_type"), **d))


def torch_device():
    """Where the PyTorch contenders run: the GPU when PyTorch sees one (the Trainer would use it), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device) -> None:
    """Wait for the work queued on `device` (nothing to wait for on the CPU), so a timer stops when a step has run."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_torch_optimizer(model, tc, total_steps: int):
    """The optimizer and schedule the HF Trainer builds for these arguments (its class and kwargs, its
    no-decay groups, its linear schedule)."""
    import torch
    from transformers import Trainer, TrainingArguments, get_scheduler

    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), learning_rate=tc.learning_rate,
                              adam_beta1=tc.adam_b1, adam_beta2=tc.adam_b2, adam_epsilon=tc.adam_eps,
                              weight_decay=tc.weight_decay, report_to="none", use_cpu=not torch.cuda.is_available())
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
    exempt = lambda n: "bias" in n or "LayerNorm" in n or "layer_norm" in n  # noqa: E731 - DistilBERT's *_layer_norm
    no_decay = [p for n, p in model.named_parameters() if exempt(n)]
    decay = [p for n, p in model.named_parameters() if not exempt(n)]
    opt = cls([{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
              **kwargs)
    return opt, get_scheduler("linear", opt, num_warmup_steps=tc.warmup_steps, num_training_steps=total_steps)


def run_torch(args, cfg, tok, enc, subset, vocab, mode: str) -> dict:
    import torch
    from transformers import DataCollatorForTokenClassification

    tc = cfg.train
    torch.manual_seed(tc.seed)
    device = torch_device()
    model = torch_model(cfg, vocab).to(device)
    model.train()
    opt, sched = make_torch_optimizer(model, tc, args.total_steps)
    collator = DataCollatorForTokenClassification(tok)
    batches = draw(args, enc, subset, tc.batch_size, tc.seed, mode)
    features = {int(i): {"input_ids": enc.input_ids[i].tolist(), "labels": enc.labels[i].tolist()}
                for i in np.unique(np.concatenate(batches))}

    def one_pass(idx_list) -> tuple[list[float], int]:
        losses, pending, padded = [], [], 0
        for idx in idx_list:
            batch = {k: v.to(device) for k, v in collator([features[int(i)] for i in idx]).items()}
            padded += batch["input_ids"].numel()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.torch_bf16):  # TrainingArguments(bf16=True)
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            opt.step()
            sched.step()
            model.zero_grad()
            pending.append(loss.detach())
            if len(pending) >= tc.log_every:
                losses += [float(x) for x in pending]
                pending.clear()
        synchronize(device)  # the last step's update too, on a GPU
        return losses + [float(x) for x in pending], padded

    t0 = time.perf_counter()
    one_pass(batches[:args.warmup])
    warm_s = time.perf_counter() - t0
    times, losses, padded = [], [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        losses, padded = one_pass(batches)
        times.append(time.perf_counter() - t0)
    return {"pass_s": times, "padded_tokens": padded, "warmup_s": warm_s, "compile_count": 0, "compile_s": 0.0,
            "last_loss": losses[-1], "threads": torch.get_num_threads(), "torch_device": str(device),
            **sample_size(enc, batches), "epoch_padding": epoch_padding(enc, tc.batch_size, tc.seed, mode)}


def worker(args) -> None:
    t0 = time.perf_counter()
    cfg, tok, enc, subset, vocab = load(args)
    load_s = time.perf_counter() - t0
    if args.worker == "a":
        out = run_flaxner(args, cfg, tok, enc, subset, vocab)
    else:
        out = run_torch(args, cfg, tok, enc, subset, vocab, "random" if args.worker == "b" else "grouped")
    real = out["real_tokens"]
    pass_s = median(out["pass_s"])
    label = CONTENDERS[args.worker]
    if args.worker == "a" and out.get("pack_length"):
        label = f"flaxner (rows of {out['pack_length']} packed, grouped)"
    if args.worker != "a" and args.torch_bf16:
        label += ", bf16 autocast"
    if args.worker == "a" and cfg.model.dtype != "float32":
        label += f", model.dtype {cfg.model.dtype}"
    out.update(contender=args.worker, label=label, steps=args.steps, draw=args.draw,
               padding=1 - real / out["padded_tokens"], median_pass_s=pass_s,
               s_per_step=pass_s / args.steps, real_tok_s=real / pass_s, padded_tok_s=out["padded_tokens"] / pass_s,
               load_s=load_s, peak_rss_mib=peak_rss_mib(), malloc=malloc_status())
    write_json(args.json, out)


COLUMNS = [("contender", "", ""), ("label", "contender", ""), ("s_per_step", "s/step", ".3f"),
           ("real_tok_s", "real tok/s", ",.0f"), ("padded_tok_s", "padded tok/s", ",.0f"),
           ("padding", "padding", ".1%"), ("epoch_padding", "padding (full epoch)", ".1%"),
           ("compile_count", "compiles", "d"), ("compile_s", "compile s", ".1f"),
           ("peak_rss_mib", "peak RSS MiB", ",.0f"), ("malloc", "malloc", "")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--config", default="", help="another config instead of the model's (e.g. a tiny one)")
    p.add_argument("--steps", type=int, default=0, help="batches per timed pass (default: minilm 50, mbert and ModernBERT-base 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed PyTorch steps first (flaxner: one per shape)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--total-steps", type=int, default=3512, help="schedule length (the seed recipe's 4 epochs)")
    p.add_argument("--seed", type=int, default=0, help="which batches (or sentences) are drawn")
    p.add_argument("--draw", choices=("epoch", "sentences"), default="epoch", help="time batches drawn from each "
                   "contender's own epoch (default), or the same sentences batched by each contender's rule")
    p.add_argument("--compile-cache", default="", help="JAX persistent cache dir; default none, so compile "
                   "time is the cold figure")
    p.add_argument("--only", default="abc", help="contenders to run, e.g. 'ab'")
    p.add_argument("--pack-length", type=int, default=None, metavar="N", help="flaxner (a) packs each batch's "
                   "sentences into rows of N (data.pack_length; 0: one a row; default: the config's)")
    p.add_argument("--json", default="", help="where to write the figures (default bench/out/train_speed-MODEL.json)")
    p.add_argument("--torch-malloc", choices=sorted(TORCH_ENV), default="system",
                   help="allocator settings for the PyTorch contenders (default glibc's own)")
    p.add_argument("--torch-bf16", action="store_true", help="the PyTorch contenders' forward under bfloat16 "
                   "autocast, as the Trainer's bf16=True runs it on a CPU (compare with flaxner's model.dtype=mixed)")
    p.add_argument("--in-process", action="store_true", help="run the contenders in this process, one after "
                   "the other (smoke tests only: they disturb each other)")
    p.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every contender")
    args = p.parse_args(argv)
    args.steps = args.steps or DEFAULT_STEPS[args.model]
    if args.worker:
        worker(args)
        return 0

    info = header()
    info["in_process"] = args.in_process
    info["torch_malloc"] = args.torch_malloc
    json_path = Path(args.json or Path(__file__).parent / "out" / f"train_speed-{args.model}.json")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.only:
            cmd = bench_command("train_speed", "--model", args.model, "--steps", str(args.steps), "--repeats",
                                str(args.repeats), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                                "--total-steps", str(args.total_steps), "--seed", str(args.seed), "--draw", args.draw,
                                "--compile-cache", args.compile_cache, "--worker", c, "--json", f"{tmp}/{c}.json")
            cmd += ["--config", args.config] if args.config else []
            cmd += ["--pack-length", str(args.pack_length)] if args.pack_length is not None else []
            cmd += ["--torch-bf16"] if args.torch_bf16 else []
            if args.in_process:  # smoke tests: no interpreter start per contender, figures not comparable
                worker(argparse.Namespace(**{**vars(args), "worker": c, "json": f"{tmp}/{c}.json"}))
                results[c] = json.loads(Path(f"{tmp}/{c}.json").read_text())
            else:
                env = TORCH_ENV[args.torch_malloc] if c != "a" else {}
                results[c] = run_child(cmd + ["--", *args.overrides], f"{tmp}/{c}.json", env=env)
    ratios = {f"{x}/{y}": results[x]["real_tok_s"] / results[y]["real_tok_s"]
              for x, y in (("a", "b"), ("a", "c")) if "real_tok_s" in results.get(x, {})
              and "real_tok_s" in results.get(y, {})}
    drawn = "each contender's epoch" if args.draw == "epoch" else "the same sentences"
    print(f"\n## Training throughput: {args.model}, batch {args.batch_size}, {args.steps} steps x "
          f"{args.repeats} passes (medians), batches drawn from {drawn}\n")
    print(markdown_table([{"contender": c, **r} for c, r in results.items() if "real_tok_s" in r], COLUMNS))
    print("\n" + "  ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
    failed = [c for c, r in results.items() if "error" in r]
    write_json(json_path, {**info, "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                           "torch_bf16": args.torch_bf16, "overrides": args.overrides,
                           "repeats": args.repeats, "contenders": results, "ratios": ratios})
    print(f"\nfigures: {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
