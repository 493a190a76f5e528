"""One train step at fixed batch shapes: flaxner's against the HF Trainer's PyTorch step, turn by turn.

`bench.train_speed` times each contender on the batches of its own epoch, one process after the other, so its
ratio mixes two things: how much each pads, and how fast each runs a padded position at the shapes it meets. This
script isolates the second. For each length L of `--lengths` both contenders run a step on the same 16 sentences
of CoNLL-2003 train cut to L sub-tokens (no padding: every position is real), and they run in turns, in two
worker processes that wait on a pipe while the other works: flaxner step, PyTorch step, flaxner, PyTorch, ... for
`--repeats` rounds after `--warmup` untimed steps each. A slow spell of the machine then falls on both.

  a  flaxner: `build_run`'s train step (gradients, then the update: clipping + Adam on the linear schedule)
  b  PyTorch `...ForTokenClassification` of the same family and shape, forward + backward, clipping, the
     Trainer's optimizer (`Trainer.get_optimizer_cls_and_kwargs`) and schedule, `zero_grad`

    python -m bench.step_shapes --model ModernBERT-base --lengths 16,32,48,64
    python -m bench.step_shapes --model electra-base-discriminator

Reported per length: each contender's median and minimum seconds a step, positions/s at the median, and a/b.
With a GPU both run on it (`bench.train_speed`'s note on precision applies).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import bench_command, header, markdown_table, median, write_json
from bench.train_speed import MODELS, load, make_torch_optimizer, synchronize, torch_device, torch_model


def rows_of_length(lengths: np.ndarray, length: int, batch_size: int) -> np.ndarray:
    """`batch_size` sentences at least `length` sub-tokens long (the shortest such), or the longest ones."""
    order = np.argsort(lengths, kind="stable")
    long_enough = order[lengths[order] >= length]
    return long_enough[:batch_size] if len(long_enough) >= batch_size else order[-batch_size:]


def cut(ids: list, labels: list, rows: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """The rows' first `length` sub-tokens (padded with `pad_id` when a row is shorter), mask and labels."""
    out = {"input_ids": np.full((len(rows), length), pad_id, np.int32),
           "attention_mask": np.zeros((len(rows), length), np.int32),
           "labels": np.full((len(rows), length), -100, np.int32)}
    for r, i in enumerate(rows):
        n = min(len(ids[i]), length)
        out["input_ids"][r, :n], out["attention_mask"][r, :n], out["labels"][r, :n] = ids[i][:n], 1, labels[i][:n]
    return out


def flaxner_stepper(args, cfg, enc, vocab):
    """step(L) -> seconds of one blocked flaxner train step on the length-L batch."""
    import jax

    from flaxner.training.train import build_run

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=args.total_steps, eval_test=False))
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(cfg, Path(tmp) / "run", keep_model_vocab=vocab is None)
        run.ckpt.close()
    compact = run.splits["train"].enc  # the same rows as `enc`, in the run's (compact) vocabulary
    state, step_fn, rt, pad_id = [run.state], run.step_fn, run.rt, run.pad_id
    del run

    def step(length: int) -> float:
        rows = rows_of_length(enc.lengths, length, cfg.train.batch_size)
        batch = rt.put(cut(compact.input_ids, compact.labels, rows, length, pad_id))
        t0 = time.perf_counter()
        state[0], metrics = step_fn(state[0], batch)
        jax.block_until_ready((state[0], metrics))
        return time.perf_counter() - t0

    return step


def torch_stepper(args, cfg, tok, enc, vocab):
    """step(L) -> seconds of one PyTorch step as the HF Trainer takes it, on the length-L batch."""
    import torch

    tc = cfg.train
    torch.manual_seed(tc.seed)
    device = torch_device()
    model = torch_model(cfg, vocab).to(device)
    model.train()
    opt, sched = make_torch_optimizer(model, tc, args.total_steps)

    def step(length: int) -> float:
        rows = rows_of_length(enc.lengths, length, tc.batch_size)
        batch = {k: torch.from_numpy(v.astype(np.int64)).to(device)
                 for k, v in cut(enc.input_ids, enc.labels, rows, length, tok.pad_token_id or 0).items()}
        synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.torch_bf16):  # the Trainer's bf16=True
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        opt.step()
        sched.step()
        model.zero_grad()
        synchronize(device)
        return time.perf_counter() - t0

    return step


def worker(args) -> None:
    """Set up, say `ready`, then answer each length read from stdin with one step's seconds."""
    cfg, tok, enc, _, vocab = load(argparse.Namespace(**{**vars(args), "steps": 1, "seed": 0, "compile_cache": ""}))
    step = flaxner_stepper(args, cfg, enc, vocab) if args.worker == "a" else torch_stepper(args, cfg, tok, enc, vocab)
    print("ready", flush=True)
    for line in sys.stdin:
        print(f"seconds {step(int(line))!r}", flush=True)


class Contender:
    """A worker process driven over its stdin/stdout, one step per request."""

    def __init__(self, args, name: str):
        cmd = bench_command("step_shapes", "--model", args.model, "--batch-size", str(args.batch_size),
                            "--total-steps", str(args.total_steps), "--worker", name,
                            *(["--config", args.config] if args.config else []),
                            *(["--torch-bf16"] if args.torch_bf16 else []), "--", *args.overrides)
        # both workers live at once: JAX must not take most of a GPU's memory up front (no effect on a CPU)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
        self._expect("ready")

    def _expect(self, word: str) -> None:
        for line in self.proc.stdout:
            if line.strip() == word:
                return
        raise RuntimeError(f"worker exited with {self.proc.wait()} before saying {word!r}")

    def step(self, length: int) -> float:
        self.proc.stdin.write(f"{length}\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # skipping anything else the worker prints
            if line.startswith("seconds "):
                return float(line.split()[1])
        raise RuntimeError(f"worker exited with {self.proc.wait()}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


COLUMNS = [("length", "L", "d"), ("a_median_s", "flaxner s/step", ".3f"), ("a_min_s", "min", ".3f"),
           ("b_median_s", "Trainer step s", ".3f"), ("b_min_s", "min", ".3f"),
           ("a_pos_s", "flaxner pos/s", ",.0f"), ("b_pos_s", "Trainer pos/s", ",.0f"), ("a_over_b", "a/b", ".2f")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.step_shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--config", default="", help="another config instead of the model's (e.g. a tiny one)")
    p.add_argument("--lengths", default="16,32,48,64", help="batch lengths (sub-tokens), comma-separated")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per length (each: a step of a, then of b)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per length and contender first")
    p.add_argument("--total-steps", type=int, default=3512, help="schedule length (the seed recipe's 4 epochs)")
    p.add_argument("--json", default="", help="where to write the figures (default bench/out/step_shapes-MODEL.json)")
    p.add_argument("--torch-bf16", action="store_true", help="the PyTorch step's forward under bf16 autocast, as "
                   "the Trainer's bf16=True (compare with flaxner's model.dtype=mixed)")
    p.add_argument("--worker", choices=("a", "b"), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both contenders")
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    info = header()
    contenders = {name: Contender(args, name) for name in ("a", "b")}
    rows = []
    try:
        for length in lengths:
            times = {name: [] for name in contenders}
            for r in range(args.warmup + args.repeats):
                for name, c in contenders.items():
                    s = c.step(length)
                    if r >= args.warmup:
                        times[name].append(s)
            positions = args.batch_size * length
            row = {"length": length, "a_s": times["a"], "b_s": times["b"]}
            for name in contenders:
                row[f"{name}_median_s"], row[f"{name}_min_s"] = median(times[name]), min(times[name])
                row[f"{name}_pos_s"] = positions / row[f"{name}_median_s"]
            row["a_over_b"] = row["a_pos_s"] / row["b_pos_s"]
            rows.append(row)
            print(f"L={length}: a {row['a_median_s']:.3f} s, b {row['b_median_s']:.3f} s, a/b {row['a_over_b']:.2f}",
                  flush=True)
    finally:
        for c in contenders.values():
            c.close()
    print(f"\n## One train step at fixed shapes: {args.model}, batch {args.batch_size}, every position real, "
          f"{args.repeats} rounds in turns (medians){', PyTorch under bf16 autocast' if args.torch_bf16 else ''}\n")
    print(markdown_table(rows, COLUMNS))
    json_path = Path(args.json or Path(__file__).parent / "out" / f"step_shapes-{args.model}.json")
    write_json(json_path, {**info, "model": args.model, "batch_size": args.batch_size, "repeats": args.repeats,
                           "warmup": args.warmup, "torch_bf16": args.torch_bf16, "overrides": args.overrides,
                           "rows": rows})
    print(f"\nfigures: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
