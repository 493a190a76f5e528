"""What `train()` attaches to the loop's events: checkpoints, the best model's export, and the end-of-run log lines.
Each handler reads the events of `flaxner.training.train.training_steps`; the benchmarks attach none."""

from __future__ import annotations

import logging

import jax

from flaxner.training import distributed, export
from flaxner.training.events import EvalEvent, StepEvent

log = logging.getLogger(__name__)


class Checkpoints:
    """A checkpoint every `train.save_every` steps (not at an epoch's last step: its evaluation saves it) and
    after every evaluation (into best/ too when it improved), each step once."""

    def __init__(self, run):
        self.run, self.every, self.saved = run, run.cfg.train.save_every, -1

    def on_step(self, ev: StepEvent) -> None:
        if self.every and ev.step % self.every == 0 and ev.batch < self.run.plan.steps_per_epoch:
            self.save(ev.step, ev.state)

    def on_eval(self, ev: EvalEvent) -> None:
        self.save(ev.step, ev.state, best=ev.improved)

    def save(self, step: int, state: dict, best: bool = False) -> None:
        self.run.ckpt.save(step, state, self.run.loop, best=best)
        self.saved = step


class BestModel:
    """Export the model of every evaluation that improves the validation F1 to model/, and keep its params for
    the test evaluation."""

    def __init__(self, run):
        self.run, self.params = run, None

    def on_eval(self, ev: EvalEvent) -> None:
        if not ev.improved:
            return
        self.params = jax.tree.map(distributed.fetch, ev.state["params"])
        if distributed.is_primary():
            export.save_model(self.run.model, self.run.export_params(self.params), self.run.tokenizer,
                              self.run.dir.model)


def log_early_stop(run, ev: EvalEvent) -> None:
    """The line that says why the run ended early and which model it keeps."""
    loop = run.loop
    log.info("early stopping at step %d: validation F1 has not improved for %d evaluations (train.patience); "
             "the best, F1 %.4f at step %d, is the exported model (%s) and the one scored on test",
             ev.step, loop.bad_evals, loop.best_f1, loop.best_step, run.dir.model)
