"""Where a run's metrics go: metrics.jsonl always (`export.MetricsLog`), and what `train.report_to` names beside
it: TensorBoard event files, an MLflow run, a Weights & Biases run. Process 0 writes; every row is one of
metrics.jsonl's (type train, eval or test, at a step), under the same names everywhere (`scalars`)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from flaxner.config import Config, ConfigError, TrainConfig, to_dict
from flaxner.rundir import RunDir
from flaxner.training.export import MetricsLog, read_metrics

log = logging.getLogger(__name__)

# What each `train.report_to` choice needs installed: (module, the pip extra that brings it).
NEEDS = {"tensorboard": ("tensorboardX", "flaxner[tensorboard]"), "mlflow": ("mlflow", "flaxner[mlflow]"),
         "wandb": ("wandb", "flaxner[wandb]")}
# The project (W&B) and experiment (MLflow) a run goes to unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say.
PROJECT = "flaxner"


def check_reporters(tc: TrainConfig) -> None:
    """Refuse a `train.report_to` whose writer is not installed, before anything loads."""
    for name in tc.report_to:
        module, extra = NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.report_to: {name} needs the {module} package: pip install '{extra}'")
        if name == "wandb" and not wandb_ready():
            raise ConfigError("train.report_to: wandb has no API key here: run `wandb login`, set WANDB_API_KEY, or "
                              "log locally with WANDB_MODE=offline")


def wandb_ready() -> bool:
    """Whether W&B can open a run: offline or disabled, an API key in the environment, or the key `wandb login`
    wrote to ~/.netrc for the server (WANDB_BASE_URL's host, api.wandb.ai by default)."""
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return host in Path(os.environ.get("NETRC") or Path.home() / ".netrc").read_text()
    except OSError:
        return False


def scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row's numbers as `<type>/<key>` (`train/loss`, `eval/f1`, `eval/f1_PER`, `test/f1`, ...)."""
    kind = row["type"]
    out = {f"{kind}/{k}": v for k, v in row.items()
           if k not in ("type", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"{kind}/f1_{label}": s["f1"] for label, s in (row.get("per_type") or {}).items()})
    return out


def flat_config(cfg: Config) -> dict[str, str]:
    """The config as `section.key` -> text (`name` alone): a tracker's run parameters."""
    out = {}
    for section, keys in to_dict(cfg).items():
        out.update({f"{section}.{k}": str(v) for k, v in keys.items()} if isinstance(keys, dict)
                   else {section: str(keys)})
    return out


class TensorBoard:
    """metrics.jsonl's numbers as TensorBoard scalars in <run>/tensorboard, at their optimizer step. A resumed run
    purges the events after the step it resumed from."""

    def __init__(self, folder: Path, resumed_at: int = 0):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=resumed_at + 1 if resumed_at else None)

    def write(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, row["step"])
        if row["type"] != "train":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """metrics.jsonl's numbers as the metrics of an MLflow run named after the run folder, with the config as its
    parameters, in the tracking store MLflow is set to (`MLFLOW_TRACKING_URI`; unset: MLflow's default,
    sqlite:///mlflow.db in the working folder) and experiment `MLFLOW_EXPERIMENT_NAME` (default flaxner).
    `run_id`: the MLflow run of an earlier session of this run, continued."""

    def __init__(self, rd: RunDir, cfg: Config, run_id: str | None = None):
        from mlflow.entities import Param, RunStatus
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client, self.continued = MlflowClient(), False
        if run_id:
            try:
                self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                self.continued = True
            except MlflowException as e:  # not in this store (MLFLOW_TRACKING_URI changed): a new run
                log.warning("MLflow run %s of %s: %s; starting a new one", run_id, rd.path, e.message)
        if not self.continued:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            run_id = self.client.create_run(exp_id, run_name=rd.path.name,
                                            tags={"flaxner.run_dir": str(rd.path.resolve())}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flat_config(cfg).items()])
        self.run_id = run_id

    def write(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, row["step"])
                                                    for k, v in scalars(row).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    """metrics.jsonl's numbers in a Weights & Biases run named after the run folder, with the config, against
    `step` (the optimizer step), in project `WANDB_PROJECT` (default flaxner); its local files go to <run>/wandb
    unless `WANDB_DIR` says. `WANDB_MODE=offline` writes them for a later `wandb sync`. `run_id`: the W&B run of
    an earlier session of this run, resumed."""

    def __init__(self, rd: RunDir, cfg: Config, run_id: str | None = None):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=rd.path.name,
                              dir=None if os.environ.get("WANDB_DIR") else str(rd.path),  # W&B adds wandb/
                              config=to_dict(cfg), id=run_id, resume="allow" if run_id else None)
        # W&B's own step only grows: a row per log call, drawn against flaxner's step (eval and test rows share
        # steps with train rows).
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id, self.continued = self.run.id, bool(run_id)

    def write(self, row: dict) -> None:
        self.run.log({**scalars(row), "step": row["step"]})

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"mlflow": MLflow, "wandb": WandB}


class Reporters:
    """metrics.jsonl and the `train.report_to` writers, as one `write(row)`. An MLflow or W&B run is kept per run
    folder (<run>/trackers.json): a resumed run continues it, without the rows it already holds (the resumed
    steps are the same steps), and one that the resumed run starts first gets the rows kept from before. A writer
    that fails (a tracking server out of reach) is logged and skipped for that row; training goes on."""

    def __init__(self, run_dir: str | Path | RunDir, cfg: Config, resumed_at: int = 0):
        rd, names = RunDir(run_dir), cfg.train.report_to
        earlier = read_metrics(rd.metrics) if resumed_at and rd.metrics.is_file() else []
        self.metrics = MetricsLog(rd.metrics, keep_until=resumed_at)
        # (name, writer, the (type, step) rows it holds already)
        self.writers: list[tuple[str, object, set]] = []
        self.failed: dict[str, int] = {}
        if "tensorboard" in names:
            self.writers.append(("tensorboard", TensorBoard(rd.tensorboard, resumed_at), set()))
        ids = json.loads(rd.trackers.read_text()) if rd.trackers.is_file() else {}
        for name in (n for n in TRACKERS if n in names):
            tracker = TRACKERS[name](rd, cfg, ids.get(name))
            self.writers.append((name, tracker, {(r["type"], r["step"]) for r in earlier} if tracker.continued
                                 else set()))
            if not tracker.continued:
                ids[name] = tracker.run_id
                rd.trackers.write_text(json.dumps(ids, indent=2) + "\n")
                for row in earlier:
                    if row["step"] <= resumed_at:
                        self._send(name, tracker, row)

    def _send(self, name: str, writer, row: dict | None) -> None:
        """`writer.write(row)`, or `writer.close()` when `row` is None; a failure is logged, not raised."""
        try:
            if row is None:
                writer.close()
            else:
                writer.write(row)
        except Exception as e:  # a tracker's failure must not end the training, nor lose its summary and card
            if name not in self.failed:
                log.warning("train.report_to %s: %s: %s (training goes on; metrics.jsonl keeps every row)", name,
                            type(e).__name__, e)
            self.failed[name] = self.failed.get(name, 0) + (row is not None)

    def write(self, row: dict) -> None:
        self.metrics.write(row)
        for name, w, done in self.writers:
            if (row["type"], row["step"]) not in done:
                self._send(name, w, row)

    def close(self) -> None:
        for name, w, _ in self.writers:
            self._send(name, w, None)
        for name, n in self.failed.items():
            if n:
                log.warning("train.report_to %s: %d rows did not reach it (they are in metrics.jsonl)", name, n)
