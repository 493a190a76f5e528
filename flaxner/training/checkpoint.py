"""orbax checkpoints of the train state (params, optimizer state, step, RNG key) plus the loop's state as JSON
(`LoopState`: data position, best F1, history, labels); the last few and the best are kept. A damaged newest
checkpoint is skipped for the one before it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from flaxner.training import distributed

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No checkpoint of a run folder can be restored."""


@dataclass
class LoopState:
    """Where the loop is, saved with every checkpoint (the JSON is the same as older runs' `meta` dict)."""

    labels: list[str]
    epoch: int = 0  # epochs finished (evaluated)
    batch: int = 0  # batches of the current epoch done
    best_f1: float = -1.0
    history: list[dict] = field(default_factory=list)  # one row per evaluation, without per-type scores
    epoch_loss: float = 0.0  # summed loss of the current epoch's steps read so far
    epoch_batches: int = 0
    last_eval: int = -1  # the step of the last evaluation (a mid-epoch one due at a resumed step runs then)
    best_step: int = 0  # the step of the best evaluation
    best_per_type: dict = field(default_factory=dict)  # its scores per entity type
    bad_evals: int = 0  # evaluations since the best one (train.patience stops when it reaches the patience)
    best_samples: list = field(default_factory=list)  # its predicted tags of the card's sample sentences
    # Step metrics not read back from the device yet (reading waits for the step), and losses read but not logged.
    pending: list = field(default_factory=list, repr=False, compare=False)
    window: list[float] = field(default_factory=list, repr=False, compare=False)

    SAVED = ("epoch", "batch", "best_f1", "history", "labels", "epoch_loss", "epoch_batches", "last_eval",
             "best_step", "best_per_type", "bad_evals", "best_samples")

    def flush(self) -> None:
        """Read the pending steps' losses into the epoch's sum and the log window (this waits for those steps)."""
        losses = [float(distributed.fetch(m["loss"])) for m in self.pending]
        self.epoch_loss += sum(losses)
        self.epoch_batches += len(losses)
        self.window += losses
        self.pending.clear()

    def take_window(self) -> list[float]:
        """The losses of the steps since the last log row (flushed), emptying the window."""
        self.flush()
        out, self.window = self.window, []
        return out

    @property
    def unlogged(self) -> int:
        return len(self.pending) + len(self.window)

    def to_json(self) -> dict:
        self.flush()
        return {k: getattr(self, k) for k in self.SAVED}

    @classmethod
    def from_json(cls, meta: dict) -> LoopState:
        known = {f.name for f in fields(cls)} & set(cls.SAVED)
        return cls(**{k: v for k, v in meta.items() if k in known})


class Checkpointer:
    """Two orbax managers under `folder` (a run's checkpoints/): `last` (rolling) and `best` (by validation F1).
    Saving a step that is already there replaces it, so a step saved twice (a save point at an epoch's end, a
    resumed run re-saving where it stopped) never fails."""

    def __init__(self, folder: str | Path, keep: int = 2):
        root = Path(folder).resolve()
        self.last = ocp.CheckpointManager(root / "last", options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(root / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["f1"], best_mode="max",
            enable_async_checkpointing=False))

    def save(self, step: int, state: Any, loop: LoopState | dict, best: bool = False) -> None:
        """Save the state and loop state at `step`; into `best` too (first, so that a kill between the two saves
        leaves `last` older, and the epoch is evaluated again) when this step has the best F1 so far."""
        meta = loop.to_json() if isinstance(loop, LoopState) else loop
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        for mngr, metrics in ((self.best, {"f1": float(meta["best_f1"])}), (self.last, None)) if best else \
                ((self.last, None),):
            if step in mngr.all_steps():
                mngr.delete(step)
            mngr.save(step, args=args, metrics=metrics, force=True)
            mngr.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def read_labels(self) -> list[str] | None:
        """The label inventory stored with the newest checkpoint whose metadata reads (None: no checkpoint)."""
        for step in sorted(self.last.all_steps(), reverse=True):
            try:
                meta = self.last.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                return list(meta["labels"])
            except Exception as e:  # noqa: BLE001 - damaged: `restore_latest` says which and skips it
                log.debug("metadata of checkpoint %d unreadable: %s", step, e)
        return None

    def restore(self, abstract_state: Any, step: int | None = None, which: str = "last") -> tuple[Any, dict]:
        """Restore (state, meta) at `step` (default: latest) into the shapes/shardings of `abstract_state`."""
        mngr = self.best if which == "best" else self.last
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def restore_latest(self, abstract_state: Any) -> tuple[Any, LoopState] | None:
        """(state, loop state) of the newest intact `last` checkpoint, None when there is none; damaged newer ones
        are logged and deleted (a later save of their step must not find them)."""
        steps = sorted(self.last.all_steps(), reverse=True)
        for n, step in enumerate(steps):
            try:
                state, meta = self.restore(abstract_state, step)
                loop = LoopState.from_json(meta)
            except Exception as e:  # noqa: BLE001 - orbax, tensorstore and JSON each raise their own kind
                log.warning("checkpoint %s is damaged (%s: %s); trying the one before",
                            Path(str(self.last.directory)) / str(step), type(e).__name__, str(e).splitlines()[0][:200])
                continue
            for bad in steps[:n]:
                log.warning("deleting damaged checkpoint %s", Path(str(self.last.directory)) / str(bad))
                self.last.delete(bad)
            if n:
                log.warning("resuming from checkpoint %s", Path(str(self.last.directory)) / str(step))
            return state, loop
        if steps:
            raise CheckpointError(f"{self.last.directory}: no intact checkpoint (steps {sorted(steps)} are all "
                                  f"damaged); start the run again with --overwrite")
        return None

    def close(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()
        self.last.close()
        self.best.close()
