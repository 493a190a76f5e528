"""orbax checkpoints of the train state (params, optimizer state, step, RNG key) plus JSON run metadata (data
position, best F1, history, label map); the last few and the best are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """Two orbax managers under `run_dir/checkpoints`: `last` (rolling) and `best` (by validation F1)."""

    def __init__(self, run_dir: str | Path, keep: int = 2):
        root = Path(run_dir).resolve() / "checkpoints"
        self.last = ocp.CheckpointManager(root / "last", options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(root / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["f1"], best_mode="max",
            enable_async_checkpointing=False))

    def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
        """Save the state and metadata at `step` (into `best` too when this step has the best F1 so far)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.last.save(step, args=args, force=True)
        if best:
            self.best.save(step, args=args, metrics={"f1": float(meta["best_f1"])}, force=True)

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def restore(self, abstract_state: Any, step: int | None = None, which: str = "last") -> tuple[Any, dict]:
        """Restore (state, meta) at `step` (default: latest) into the shapes/shardings of `abstract_state`."""
        mngr = self.best if which == "best" else self.last
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def close(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()
        self.last.close()
        self.best.close()
