"""The run folder's layout, known here only: what `flaxner train` writes and what `--resume`, `flaxner tag`,
`flaxner eval` and the notebook read.

    config.yaml     the resolved config the run was started with
    metrics.jsonl   one JSON line per logged step, evaluation and test
    summary.json    the finished run's summary (`flaxner.training.train.Summary`)
    checkpoints/    orbax checkpoints: last/ (rolling) and best/
    model/          the best epoch's HF-format model
    README.md       the model card (also model/README.md)
    samples.html    the card's sample predictions as a page (also model/samples.html)
    sentences.json  the sentence starts learnt from the training documents (flaxner.data.sentences), when it has any
    tensorboard/    TensorBoard event files, with train.report_to: [tensorboard]
    trackers.json   the MLflow and W&B run ids, with train.report_to: [mlflow] / [wandb] (a resumed run continues them)
    wandb/          W&B's local files, with train.report_to: [wandb] (unless WANDB_DIR is set)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


class RunDirError(ValueError):
    """A run folder that cannot be used as asked (a run already there, none to resume)."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path.path if isinstance(path, RunDir) else path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def sentences(self) -> Path:
        return self.path / "sentences.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def card(self) -> Path:
        return self.path / "README.md"

    @property
    def samples(self) -> Path:
        return self.path / "samples.html"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def trackers(self) -> Path:
        return self.path / "trackers.json"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    def has_run(self) -> bool:
        """True when a run was started here (its config, metrics or checkpoints are present)."""
        return any(p.exists() for p in (self.config, self.metrics, self.checkpoints))

    def model_dir(self) -> Path | None:
        """The HF model folder of this run folder, or None when `path` is not a run folder with a model."""
        return self.model if (self.model / "config.json").is_file() else None

    @property
    def _files(self) -> tuple[Path, ...]:
        """The files a run writes at the top of its folder."""
        return self.config, self.metrics, self.summary, self.card, self.samples, self.trackers, self.sentences

    @property
    def _folders(self) -> tuple[Path, ...]:
        """The folders a run writes."""
        return self.checkpoints, self.model, self.tensorboard, self.wandb

    def _remove(self) -> None:
        """Remove every file and folder a run writes here (not the folder itself)."""
        for p in self._files:
            p.unlink(missing_ok=True)
        for p in self._folders:
            shutil.rmtree(p, ignore_errors=True)

    def prepare(self, resume: bool, overwrite: bool = False, delete: bool = True) -> None:
        """Check the folder suits a fresh run (or a resumed one) before anything loads; `overwrite` deletes the run
        found there first (where `delete`: on one host of several sharing the folder)."""
        for p in (*self._files, *self._folders, self.checkpoints / "last", self.checkpoints / "best"):
            if p.is_symlink():  # flaxner makes none: a planted one would be written (or removed) through
                raise RunDirError(f"{p}: is a symlink; flaxner writes no run file through a link it did not make: "
                                  f"remove the link (its target is kept) and run again")
        if resume:
            if overwrite:
                raise RunDirError("--resume and --overwrite exclude each other")
            if not self.config.is_file():
                raise RunDirError(f"{self.path}: no run to resume here (no config.yaml); start one without --resume")
            return
        if self.has_run():
            if not overwrite:
                raise RunDirError(f"{self.path} already holds a run; continue it with --resume, or replace it "
                                  f"with --overwrite")
            if delete:
                self._remove()
        self.path.mkdir(parents=True, exist_ok=True)

    def discard(self) -> None:
        """Remove what a run that failed to start wrote into this folder, which it created, and the folder when
        nothing else is left in it."""
        self._remove()
        try:
            self.path.rmdir()
        except OSError:  # something else is in it: keep it
            pass
