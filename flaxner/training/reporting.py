"""Where a run's metrics go: metrics.jsonl always (`export.MetricsLog`), and what `train.report_to` names beside
it. Process 0 writes; every row is one of metrics.jsonl's (type train, eval or test, at a step)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flaxner.config import ConfigError, TrainConfig
from flaxner.rundir import RunDir
from flaxner.training.export import MetricsLog

# What each `train.report_to` choice needs installed: (module, the pip extra that brings it).
NEEDS = {"tensorboard": ("tensorboardX", "flaxner[tensorboard]")}


def check_reporters(tc: TrainConfig) -> None:
    """Refuse a `train.report_to` whose writer is not installed, before anything loads."""
    for name in tc.report_to:
        module, extra = NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.report_to: {name} needs the {module} package: pip install '{extra}'")


class TensorBoard:
    """metrics.jsonl's numbers as TensorBoard scalars (`train/loss`, `eval/f1`, `eval/f1_PER`, `test/f1`, ...) in
    <run>/tensorboard, at their optimizer step. A resumed run purges the events after the step it resumed from."""

    def __init__(self, folder: Path, resumed_at: int = 0):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=resumed_at + 1 if resumed_at else None)

    def write(self, row: dict) -> None:
        kind, step = row["type"], row["step"]
        for key, value in row.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        for label, scores in (row.get("per_type") or {}).items():
            self.writer.add_scalar(f"{kind}/f1_{label}", scores["f1"], step)
        if kind != "train":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Reporters:
    """metrics.jsonl and the `train.report_to` writers, as one `write(row)`."""

    def __init__(self, run_dir: RunDir, tc: TrainConfig, resumed_at: int = 0):
        self.writers = [MetricsLog(run_dir.metrics, keep_until=resumed_at)]
        if "tensorboard" in tc.report_to:
            self.writers.append(TensorBoard(run_dir.tensorboard, resumed_at))

    def write(self, row: dict) -> None:
        for w in self.writers:
            w.write(row)

    def close(self) -> None:
        for w in self.writers:
            getattr(w, "close", lambda: None)()
