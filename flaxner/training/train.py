"""Fine-tuning as build + events: `build_run` sets a run up (data, model, optimizer, step, evaluation, epoch plan,
restored checkpoint), `training_steps` trains it, yielding a `StepEvent` after every optimizer step and an
`EvalEvent` after every evaluation (`EpochEvent` after an epoch's), and `train` consumes those with handlers (metrics
and reporters, checkpoints, progress bar, signals, best-model export), then scores the test split, writes the card."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flaxner.training import distributed, export
from flaxner.data.batching import EpochPlan, epoch_rows, view_rows
from flaxner.data.packing import real_tokens
from flaxner.training.checkpoint import Checkpointer, LoopState
from flaxner.config import Config, absolute_paths, check_positions
from flaxner.training.evaluate import evaluate, jit_eval_step
from flaxner.models.checks import check_tokenizer_fits
from flaxner import interrupts
from flaxner.models.loading import make_model, make_tokenizer, model_positions
from flaxner.precompile import Precompiler, submit_run, workers_for
from flaxner.rundir import RunDir
from flaxner.runtime import Runtime, abstract, compile_stats, setup_runtime
from flaxner.training.step import TrainStep, init_state, make_optimizer, make_schedule
from flaxner.models.vocab import compact_model
from flaxner.training.events import EpochEvent, EvalEvent, StepEvent, Summary
from flaxner.training.handlers import BestModel, Checkpoints, log_early_stop
from flaxner.training.reporting import Reporters, check_reporters
from flaxner.training.setup import Split, card_samples, check_resume_config, load_splits, loss_denominator, \
    resolved_loss_norm, run_plan, save_run_files

log = logging.getLogger(__name__)

class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved in {run_dir}; "
                         f"continue with --resume --output-dir {run_dir}")
        self.signum = signum


@dataclass
class Timings:
    load_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    compile_wait_train_s: float = 0.0
    compile_wait_eval_s: float = 0.0


@dataclass
class Run:
    """A run set up and not trained: everything `training_steps` and the handlers read."""

    cfg: Config
    dir: RunDir
    rt: Runtime
    labels: tuple[str, ...]
    tokenizer: Any
    model: Any  # the full-vocabulary model that is exported
    full_params: Any
    vocab: Any  # flaxner.models.vocab.CompactVocab, or None
    train_model: Any  # the model that trains (its embedding compacted to the data's ids)
    splits: dict[str, Split]  # "train", "eval", and "test" when it is scored
    plan: EpochPlan
    total_steps: int
    schedule: Any
    step_fn: TrainStep
    eval_fn: Any
    state: dict
    loop: LoopState
    ckpt: Checkpointer
    pad_id: int
    timings: Timings
    compiles0: dict
    t0: float
    step: int = 0  # the optimizer step, tracked on the host so that no step waits for the one before it
    precompiler: Precompiler | None = None  # set by `training_steps`
    compiled_shapes: set = field(default_factory=set)  # train shapes called so far (`EpochPlan.shape`)

    @property
    def finished(self) -> bool:
        return self.loop.epoch >= self.plan.epochs or (self.step >= self.total_steps and self.loop.batch == 0) \
            or self.stopped

    @property
    def stopped(self) -> bool:
        """`train.patience` evaluations in a row did not improve the best validation F1."""
        return bool(self.cfg.train.patience) and self.loop.bad_evals >= self.cfg.train.patience

    def eval_due(self) -> bool:
        """A `train.eval_every` evaluation is due within the epoch (not done yet: a resumed run may owe one)."""
        every, loop = self.cfg.train.eval_every, self.loop
        return bool(every) and self.step % every == 0 and loop.last_eval != self.step and \
            0 < loop.batch < self.plan.steps_per_epoch and 0 < self.step < self.total_steps

    def eval_shapes(self) -> dict[str, list[int]]:
        """Padded lengths of each evaluated split's batches."""
        bs = self.cfg.train.eval_batch_size
        return {k: sorted({n for v in self.cfg.data.context_views for n in self.plan.eval_shapes(
            view_rows(s.enc, v).lengths, bs)}) for k, s in self.splits.items() if k != "train"}

    def evaluate(self, split: str, params=None) -> tuple[dict, list[list[str]]]:
        """seqeval scores and loss of `params` (default: the state's) on one split, and the predicted tags."""
        s = self.splits[split]
        params = self.state["params"] if params is None else params
        return evaluate(self.eval_fn, params, s.enc, s.gold, self.labels, self.cfg.train.eval_batch_size,
                        self.plan.buckets, self.rt.put, self.pad_id, self.plan.pack_length, self.cfg.data.context_views)

    def export_params(self, params) -> dict:
        """`params` on the host, in the full model's shape (the vocabulary expanded back)."""
        host = jax.tree.map(distributed.fetch, params)
        return self.vocab.expand(host, self.full_params) if self.vocab else host


def build_run(cfg: Config, run_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
              keep_model_vocab: bool = False) -> Run:
    """Set a run up in `run_dir` (default runs/<name>-<time>), from its last intact checkpoint when resuming:
    nothing trained yet. Refuses a folder that already holds a run unless resuming (or `overwrite`), a resume
    with no run or with training keys changed, and empty splits. `keep_model_vocab`: the model config's
    vocabulary size rather than the tokenizer's (benchmarks of a model's shape with another tokenizer)."""
    t0 = time.perf_counter()
    compiles0 = compile_stats()
    cfg = absolute_paths(cfg)  # the saved config.yaml then works from any folder
    tc = cfg.train
    distributed.initialize(tc)
    # Every host checks the folder; only process 0 deletes an overwritten run; then all see the same folder.
    rd = RunDir(run_dir or distributed.broadcast(f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    created = not rd.path.exists()
    rd.prepare(resume, overwrite, delete=distributed.is_primary())
    if created and distributed.is_primary():  # a signal before the first step: no half-made run is left
        interrupts.on_interrupt(lambda: rd.discard() or f"removed the new run folder {rd.path}")
    try:
        return _build(cfg, rd, resume, keep_model_vocab, t0, compiles0)
    except BaseException:
        if created and distributed.is_primary():  # a start that failed leaves no run folder behind
            rd.discard()
        raise


def _build(cfg: Config, rd: RunDir, resume: bool, keep_model_vocab: bool, t0: float, compiles0: dict) -> Run:
    tc = cfg.train
    distributed.check_same_dir(rd.path)
    if resume:
        check_resume_config(cfg, rd.config)
    rt = setup_runtime(tc)  # joined just above
    # A fresh run creates its checkpoint folder only once its data loaded: a refused start leaves no run behind.
    ckpt = Checkpointer(rd.checkpoints, tc.keep_checkpoints) if resume else None
    labels = ckpt.read_labels() if ckpt else None
    if resume and labels is None:
        log.info("%s holds no checkpoint yet: starting from the first step", rd.path)
    tokenizer = make_tokenizer(cfg.model)
    check_positions("data.max_length", cfg.data.max_length, model_positions(cfg.model))
    splits, labels = load_splits(cfg, tokenizer, labels, sentences=distributed.is_primary())
    if distributed.is_primary():  # what eval and tag read: the labels it uses, tag defaults, learnt sentences
        save_run_files(cfg, labels, splits, rd)
    ckpt = ckpt or Checkpointer(rd.checkpoints, tc.keep_checkpoints)
    model, full_params = make_model(cfg.model, list(labels), seed=tc.seed,
                                    vocab_size=None if keep_model_vocab else len(tokenizer))
    if not cfg.model.random_init:
        check_tokenizer_fits(tokenizer, model.config.vocab_size, cfg.model.tokenizer or cfg.model.name)
    train_model, params, vocab = compact_model(tc, model, full_params, [s.enc for s in splits.values()],
                                               tokenizer.all_special_ids)
    if vocab:
        splits = {k: dataclasses.replace(s, enc=vocab.encode(s.enc)) for k, s in splits.items()}
    train_enc = splits["train"].enc
    plan = run_plan(cfg, train_enc, train_model.packs_rows, rt.length_multiple, rt.n_devices)
    total_steps = tc.max_steps or -(-plan.steps_per_epoch // tc.grad_accum) * tc.epochs  # optimizer steps
    tx = make_optimizer(tc, total_steps)
    state = init_state(params, tx, tc.seed, rt)
    del params
    loop = LoopState(labels=list(labels))
    restored = ckpt.restore_latest(abstract(state)) if resume else None
    if restored is not None:
        state, loop = restored
        log.info("resumed from step %d (epoch %d, batch %d)", int(state["step"]), loop.epoch, loop.batch)
    used = sorted({n for _, n in plan.first_uses(loop.epoch, loop.batch, (total_steps - int(state["step"])) *
                                                 tc.grad_accum)})
    log.info("shapes of the training batches: %s (%d to compile)", used, len(used))
    pad_id = int(vocab.remap[tokenizer.pad_token_id]) if vocab else tokenizer.pad_token_id or 0
    return Run(cfg=cfg, dir=rd, rt=rt, labels=labels, tokenizer=tokenizer, model=model, full_params=full_params,
               vocab=vocab, train_model=train_model, splits=splits, plan=plan, total_steps=total_steps,
               schedule=make_schedule(tc, total_steps), state=state, loop=loop, ckpt=ckpt, pad_id=pad_id,
               step_fn=TrainStep(train_model.__call__, tx, rt, loss_denominator(tc, train_enc), tc.grad_accum),
               eval_fn=jit_eval_step(train_model.__call__, len(cfg.data.context_views) > 1),
               timings=Timings(load_s=time.perf_counter() - t0), compiles0=compiles0, t0=t0, step=int(state["step"]))


def training_steps(run: Run, pre: Precompiler | None = None) -> Iterator[StepEvent | EvalEvent]:
    """Train `run` from its loop state to the end of its plan (or its early stop), evaluating after every epoch and
    every `train.eval_every` steps; yields an event after each optimizer step (of `train.grad_accum` batches) and
    each evaluation. Stop iterating to stop (the loop state stays consistent at every event). `pre` compiles the
    run's shapes ahead (default: `train.compile_workers` threads)."""
    tc, loop, plan, timings = run.cfg.train, run.loop, run.plan, run.timings
    train_enc = run.splits["train"].enc
    pre = run.precompiler = pre or Precompiler(workers_for(tc.compile_workers, run.rt.platform))
    eval_keys = submit_run(pre, run)
    with pre:
        # An epoch whose steps are all done but which is not evaluated yet (stopped at its last step) still is.
        while loop.epoch < plan.epochs and (run.step < run.total_steps or loop.batch > 0) and not run.stopped:
            epoch = loop.epoch
            order, rows_seen = plan.orders[epoch], epoch_rows(train_enc, run.cfg.data.context_dropout, tc.seed, epoch)
            t_ep = time.perf_counter()
            group, tokens = [], 0  # the micro-batches of one optimizer step
            for idx in order[loop.batch:]:
                if run.eval_due():
                    t_mid = time.perf_counter()
                    yield from _evaluate(run, eval_keys["eval"], end_of_epoch=False)
                    t_ep += time.perf_counter() - t_mid  # counted as evaluation, not training
                    if run.stopped:
                        break
                if run.step >= run.total_steps:
                    break
                batch = plan.collate(rows_seen, idx, run.pad_id)
                shape, (rows, seq) = plan.shape_of(batch), batch["input_ids"].shape
                if shape not in run.compiled_shapes:  # a new shape: wait for its compile if one is under way
                    timings.compile_wait_train_s += pre.claim(("train", shape), "update")
                    run.compiled_shapes.add(shape)
                group.append(run.rt.put(batch))
                tokens += real_tokens(batch)
                loop.batch += 1
                if len(group) < tc.grad_accum and loop.batch < len(order):
                    continue
                run.state, m = run.step_fn(run.state, group)
                loop.pending.append(m)
                run.step += 1
                losses = lr = None
                if loop.unlogged >= tc.log_every or loop.batch == len(order) or run.step >= run.total_steps:
                    losses, lr = loop.take_window(), float(run.schedule(run.step))
                yield StepEvent(run.step, epoch, loop.batch, epoch + loop.batch / plan.steps_per_epoch, rows,
                                seq, tokens, run.state, losses, lr)
                group, tokens = [], 0
            timings.train_s += time.perf_counter() - t_ep
            if run.stopped:
                break
            yield from _evaluate(run, eval_keys["eval"], end_of_epoch=True)
        if "test" in eval_keys:
            timings.compile_wait_eval_s += pre.claim(*eval_keys["test"])


def _evaluate(run: Run, keys: list, end_of_epoch: bool) -> Iterator[EvalEvent]:
    """Score the validation split, update the loop's best and patience count, and yield the evaluation's event."""
    loop, t_ev = run.loop, time.perf_counter()
    loop.flush()
    run.timings.compile_wait_eval_s += run.precompiler.claim(*keys)
    scores, pred = run.evaluate("eval")
    run.timings.eval_s += time.perf_counter() - t_ev
    epoch = loop.epoch + 1 if end_of_epoch else round(loop.epoch + loop.batch / run.plan.steps_per_epoch, 4)
    row = {"type": "eval", "epoch": epoch, "step": run.step,
           "train_loss": loop.epoch_loss / max(loop.epoch_batches, 1), **scores}
    loop.history.append({k: v for k, v in row.items() if k != "per_type"})
    improved = scores["f1"] > loop.best_f1
    if improved:
        loop.best_f1, loop.best_step, loop.bad_evals = scores["f1"], run.step, 0
        loop.best_per_type = scores.get("per_type", {})
        loop.best_samples = [pred[i] for i in run.splits["eval"].samples]
    else:
        loop.bad_evals += 1
    loop.last_eval = run.step
    if end_of_epoch:
        loop.epoch, loop.batch, loop.epoch_loss, loop.epoch_batches = loop.epoch + 1, 0, 0.0, 0
    log.info("%s %s: %s", "epoch" if end_of_epoch else "step", epoch if end_of_epoch else run.step,
             export.format_scores(scores))
    event = EpochEvent if end_of_epoch else EvalEvent
    yield event(epoch, run.step, row, improved, run.state, stop=run.stopped)


def _summary(run: Run) -> Summary:
    pre, t = run.precompiler, run.timings
    return Summary(run_dir=str(run.dir.path), steps=run.step, history=run.loop.history, best_f1=run.loop.best_f1,
                   loss_norm=resolved_loss_norm(run.cfg.train), buckets=list(run.plan.buckets),
                   compiled_train_shapes=sorted(run.compiled_shapes),
                   xla_compiles=compile_stats()["count"] - run.compiles0["count"],
                   compile_s=compile_stats()["seconds"] - run.compiles0["seconds"], compile_workers=pre.workers,
                   compiled_ahead=len(pre.done), devices=run.rt.n_devices, best_step=run.loop.best_step,
                   best_per_type=run.loop.best_per_type, stopped_early=run.stopped, labels=list(run.labels),
                   train_sentences=len(run.splits["train"].gold), samples=card_samples(run.splits["eval"], run.loop),
                   **dataclasses.asdict(t))


def train(cfg: Config, output_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False) -> Summary:
    """Run the recipe of `cfg` into `output_dir` (or continue it with `resume`); returns the final summary. A
    resumed run that had finished returns its saved summary."""
    check_reporters(cfg.train)
    # Loading, tracing and the first compiles keep nothing yet: a signal ends them at once (flaxner/interrupts.py).
    early = interrupts.PromptExit("train", "while loading and compiling, before the first step")
    with early:
        run = build_run(cfg, output_dir, resume, overwrite)
    rd, primary = run.dir, distributed.is_primary()
    if resume and run.finished and rd.summary.is_file():
        run.ckpt.close()
        log.info("%s: the run is already finished (%d steps); nothing to do", rd.path, run.step)
        return Summary.from_json(json.loads(rd.summary.read_text()))
    metrics = Reporters(rd, run.cfg, resumed_at=run.step) if primary else None
    checkpoints, best = Checkpoints(run), BestModel(run)
    tokens, t_log = 0, time.perf_counter()
    with contextlib.closing(metrics) if metrics else contextlib.nullcontext():  # flushes what it holds
        with contextlib.closing(training_steps(run)) as events, early, distributed.StopSignals() as stop, \
                export.progress(run.total_steps, run.step) as bar:
            for ev in events:
                if isinstance(ev, StepEvent):
                    early.disarm()  # from the first step on, a signal saves a checkpoint (StopSignals)
                    tokens += ev.tokens
                    if ev.losses is not None:
                        if metrics:
                            metrics.write({"type": "train", "step": ev.step, "epoch": ev.epoch_progress,
                                           "loss": float(np.mean(ev.losses)), "learning_rate": ev.learning_rate})
                        bar.set_postfix(loss=f"{np.mean(ev.losses):.4f}", lr=f"{ev.learning_rate:.2e}",
                                        tok_s=f"{tokens / (time.perf_counter() - t_log):.0f}")
                        tokens, t_log = 0, time.perf_counter()
                    bar.update(1)
                    checkpoints.on_step(ev)
                    if distributed.agree(bool(stop.signum)):
                        if checkpoints.saved != ev.step:
                            checkpoints.save(ev.step, ev.state)
                        run.ckpt.close()
                        raise Interrupted(stop.signum or signal.SIGTERM, ev.step, rd.path)
                else:
                    if metrics:
                        metrics.write(ev.scores)
                    best.on_eval(ev)
                    checkpoints.on_eval(ev)
                    if ev.stop:
                        log_early_stop(run, ev)
        summary = _summary(run)
        if "test" in run.splits:
            params = best.params
            if params is None:  # resumed after the best evaluation: take it from the best checkpoint
                params = run.ckpt.restore(abstract(run.state), which="best")[0]["params"]
            summary.test = run.evaluate("test", jax.device_put(params, run.rt.replicated))[0]
            if metrics:
                metrics.write({"type": "test", "step": run.step, **summary.test})
    run.ckpt.close()
    summary.total_s = time.perf_counter() - run.t0
    if primary:
        rd.summary.write_text(json.dumps(summary.to_json(), indent=2))
        export.write_card(rd, cfg, summary.to_json())
    return summary
