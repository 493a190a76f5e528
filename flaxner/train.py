"""Fine-tuning: the run around the step (`flaxner.step`): data, seqeval every epoch, orbax checkpoints, export."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import jax
import numpy as np

from flaxner import distributed, export
from flaxner.checkpoint import Checkpointer
from flaxner.config import Config, TrainConfig, save_config
from flaxner.data import Encoded, encode, iter_batches, load_split, run_buckets
from flaxner.evaluate import evaluate, jit_eval_step
from flaxner.labels import CONLL_LABELS, IGNORE
from flaxner.model import make_model, make_tokenizer
from flaxner.precompile import Precompiler, submit_run, workers_for
from flaxner.runtime import abstract, compile_stats, setup_runtime
from flaxner.step import init_state, make_optimizer, make_schedule, make_train_step
from flaxner.vocab import compact_model

log = logging.getLogger(__name__)


class _Discard:
    """metrics.jsonl on hosts other than process 0."""

    def write(self, row: dict) -> None:
        pass


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved in {run_dir}; "
                         f"continue with --resume --output-dir {run_dir}")
        self.signum = signum


def load_data(cfg: Config, tokenizer) -> dict[str, tuple[Encoded, list[list[str]]]]:
    """Encoded train/eval/test splits with their word-level gold tags."""
    out = {}
    splits = {"train": cfg.data.train_split, "eval": cfg.data.eval_split}
    if cfg.train.eval_test:
        splits["test"] = cfg.data.test_split
    for key, split in splits.items():
        cols = load_split(cfg.data, split)[:]  # read the columns once, for the gold tags and the encoding
        gold = [[CONLL_LABELS[t] for t in tags] for tags in cols["ner_tags"]]
        out[key] = (encode(cols, tokenizer, cfg.data), gold)
    return out


def resolved_loss_norm(tc: TrainConfig) -> str:
    """`train.loss_norm` with "auto" decided by the batching."""
    if tc.loss_norm == "auto":
        return "dataset" if tc.batching == "grouped" else "batch"
    return tc.loss_norm


def loss_denominator(tc: TrainConfig, enc: Encoded) -> float | None:
    """None for `loss_norm: batch` (each batch's mean, as the Trainer); for "dataset", the mean number of
    labelled tokens per batch over an epoch. Length-grouped batches hold from a few labelled tokens to hundreds;
    a per-batch mean weighs a token of a short-sentence batch many times one of a long-sentence batch, while
    dividing by this constant weighs every token the same, as random batches do on average. "auto" is dataset
    for grouped batches and batch for random ones."""
    if resolved_loss_norm(tc) == "batch":
        return None
    labelled = sum(int(np.sum(np.asarray(lab) != IGNORE)) for lab in enc.labels)
    return labelled / -(-len(enc.input_ids) // tc.batch_size)  # over the epoch's batches


def train(cfg: Config, output_dir: str | Path | None = None, resume: bool = False,
          stop_after: int = 0) -> dict:
    """Run the recipe of `cfg` into `output_dir`; returns the final summary. `stop_after` simulates an
    interruption after that many steps (tests)."""
    t0 = time.perf_counter()
    compiles0 = compile_stats()
    rt = setup_runtime(cfg.train)
    tc = cfg.train
    run_dir = Path(output_dir or distributed.broadcast(f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    distributed.check_same_dir(run_dir)
    primary = distributed.is_primary()
    if primary:
        save_config(cfg, run_dir / "config.yaml")
    labels = list(CONLL_LABELS)

    tokenizer = make_tokenizer(cfg.model)
    data = load_data(cfg, tokenizer)
    model, full_params = make_model(cfg.model, labels, seed=tc.seed, vocab_size=len(tokenizer))
    train_model, params, vocab = compact_model(tc, model, full_params, [enc for enc, _ in data.values()],
                                               tokenizer.all_special_ids)
    if vocab:
        data = {k: (vocab.encode(enc), gold) for k, (enc, gold) in data.items()}
    train_enc = data["train"][0]
    steps_per_epoch = -(-len(train_enc.input_ids) // tc.batch_size)
    total_steps = tc.max_steps or steps_per_epoch * tc.epochs
    tx = make_optimizer(tc, total_steps)
    schedule = make_schedule(tc, total_steps)
    state = init_state(params, tx, tc.seed, rt)
    del params
    t_load = time.perf_counter() - t0

    ckpt = Checkpointer(run_dir, tc.keep_checkpoints)
    meta = {"epoch": 0, "batch": 0, "best_f1": -1.0, "history": [], "labels": labels,
            "epoch_loss": 0.0, "epoch_batches": 0}
    if resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(abstract(state))
        log.info("resumed from step %d (epoch %d, batch %d)", int(state["step"]), meta["epoch"], meta["batch"])
    metrics_log = (export.MetricsLog(run_dir / "metrics.jsonl", keep_until=int(state["step"])) if primary
                   else _Discard())

    step_fn = make_train_step(train_model.__call__, tx, rt, loss_denominator(tc, train_enc))
    eval_fn = jit_eval_step(train_model.__call__)
    bucket_shapes: set[int] = set()
    buckets = run_buckets(cfg.data, tc, train_enc.lengths, rt.length_multiple)
    log.info("padded lengths: %s", list(buckets))
    timings = {"load_s": t_load, "train_s": 0.0, "eval_s": 0.0, "compile_wait_train_s": 0.0,
               "compile_wait_eval_s": 0.0}
    pad_id = int(vocab.remap[tokenizer.pad_token_id]) if vocab else tokenizer.pad_token_id or 0
    best_params = None

    step = int(state["step"])  # tracked on the host so that no step waits for the one before it
    pre = Precompiler(workers_for(tc.compile_workers, rt.platform))
    eval_keys = submit_run(pre, step_fn, eval_fn, state, rt, tc, buckets, train_enc.lengths,
                           {k: enc.lengths for k, (enc, _) in data.items() if k != "train"},
                           (meta["epoch"], meta["batch"]), total_steps - step, steps_per_epoch)
    with pre, distributed.StopSignals() as stop, export.progress(total_steps, step) as bar:
        while meta["epoch"] < tc.epochs and step < total_steps:
            epoch = meta["epoch"]
            t_ep = time.perf_counter()
            pending, real_tokens, t_log = [], 0, t_ep
            for idx, batch in iter_batches(train_enc, tc.batch_size, buckets, tc.seed, epoch,
                                           tc.batching, start=meta["batch"], pad_id=pad_id):
                seq = batch["input_ids"].shape[1]
                if seq not in bucket_shapes:  # a new shape: wait for its compile if one is under way
                    timings["compile_wait_train_s"] += pre.claim(("train", seq), "update")
                    bucket_shapes.add(seq)
                state, m = step_fn(state, rt.put(batch))
                real_tokens += int(batch["attention_mask"].sum())
                meta["batch"] += 1
                pending.append(m)
                step += 1
                if len(pending) >= tc.log_every or meta["batch"] * tc.batch_size >= len(train_enc.input_ids):
                    losses = _flush(pending, meta)
                    lr = float(schedule(step))
                    metrics_log.write({"type": "train", "step": step, "epoch": epoch + meta["batch"] / steps_per_epoch,
                                       "loss": float(np.mean(losses)), "learning_rate": lr})
                    bar.set_postfix(loss=f"{np.mean(losses):.4f}", lr=f"{lr:.2e}",
                                    tok_s=f"{real_tokens / (time.perf_counter() - t_log):.0f}")
                    real_tokens, t_log = 0, time.perf_counter()
                bar.update(1)
                if distributed.agree(stop_after and step >= stop_after or stop.signum):
                    _flush(pending, meta)
                    ckpt.save(step, state, meta)
                    ckpt.close()
                    raise Interrupted(stop.signum or signal.SIGTERM, step, run_dir)
                if tc.save_every and step % tc.save_every == 0:
                    _flush(pending, meta)
                    ckpt.save(step, state, meta)
                if step >= total_steps:
                    break
            _flush(pending, meta)
            timings["train_s"] += time.perf_counter() - t_ep
            t_ev = time.perf_counter()
            timings["compile_wait_eval_s"] += pre.claim(*eval_keys["eval"])
            ev, _ = evaluate(eval_fn, state["params"], *data["eval"], labels, tc.eval_batch_size,
                             buckets, rt.put, pad_id)
            timings["eval_s"] += time.perf_counter() - t_ev
            row = {"type": "eval", "epoch": epoch + 1, "step": step,
                   "train_loss": meta["epoch_loss"] / max(meta["epoch_batches"], 1),
                   **{k: v for k, v in ev.items()}}
            metrics_log.write(row)
            meta["history"].append({k: v for k, v in row.items() if k != "per_type"})
            improved = ev["f1"] > meta["best_f1"]
            if improved:
                meta["best_f1"] = ev["f1"]
                best_params = jax.device_get(state["params"])
                if primary:
                    export.save_model(model, vocab.expand(best_params, full_params) if vocab else best_params,
                                      tokenizer, run_dir / "model")
            meta.update(epoch=epoch + 1, batch=0, epoch_loss=0.0, epoch_batches=0)
            ckpt.save(step, state, meta, best=improved)
            log.info("epoch %d: %s", epoch + 1, export.format_scores(ev))

    summary = {"run_dir": str(run_dir), "steps": step, "history": meta["history"],
               "best_f1": meta["best_f1"], "loss_norm": resolved_loss_norm(tc), "buckets": list(buckets),
               "compiled_train_shapes": sorted(bucket_shapes),
               "xla_compiles": compile_stats()["count"] - compiles0["count"],
               "compile_s": compile_stats()["seconds"] - compiles0["seconds"],
               "compile_workers": pre.workers, "compiled_ahead": len(pre.done), "devices": rt.n_devices, **timings}
    if "test" in data:
        if best_params is None:  # resumed after the best epoch: take it from the best checkpoint
            best_state, _ = ckpt.restore(abstract(state), which="best")
            best_params = best_state["params"]
        test, _ = evaluate(eval_fn, jax.device_put(best_params, rt.replicated), *data["test"], labels,
                           tc.eval_batch_size, buckets, rt.put, pad_id)
        metrics_log.write({"type": "test", "step": step, **test})
        summary["test"] = test
    ckpt.close()
    summary["total_s"] = time.perf_counter() - t0
    if primary:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        export.write_card(run_dir, cfg, summary)
    return summary


def _flush(pending: list, meta: dict) -> list[float]:
    """Move the losses of steps not yet read into the epoch's running sum (this waits for those steps)."""
    losses = [float(x["loss"]) for x in pending]
    meta["epoch_loss"] += sum(losses)
    meta["epoch_batches"] += len(losses)
    pending.clear()
    return losses

