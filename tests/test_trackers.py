"""`train.report_to: [mlflow, wandb]` (marker `trackers`; each test skipped without its package: pip install
'flaxner[mlflow,wandb]'): the tiny run's metrics.jsonl rows read back from an MLflow store (sqlite in tmp_path) and
from W&B's offline run files, each (name, step) once, and a resumed run continuing the same MLflow run while a W&B
run it starts gets the rows from before the interruption. Nothing leaves tmp_path: no server, no network."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from flaxner.config import replace
from flaxner.training.train import Interrupted, train
from helpers import interrupt_at, metrics_by_name, mlflow_metrics, tracker_env, wandb_metrics

pytestmark = pytest.mark.trackers
HAVE = {name: importlib.util.find_spec(name) is not None for name in ("mlflow", "wandb")}


def _env(m: pytest.MonkeyPatch, store: Path) -> str:
    env = tracker_env(store)
    for k, v in env.items():
        m.setenv(k, v)
    for k in ("WANDB_DIR", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME"):
        m.delenv(k, raising=False)
    return env["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def tracked(tiny_cfg, tmp_path_factory):
    """The tiny recipe (2 epochs, train rows every 2 steps, per-type eval rows, a test row) reporting to the
    trackers installed: (its run folder, the MLflow tracking URI)."""
    names = tuple(n for n, ok in HAVE.items() if ok)
    if not names:
        pytest.skip("neither mlflow nor wandb is installed: pip install 'flaxner[mlflow,wandb]'")
    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as m:
        uri = _env(m, root)
        summary = train(replace(tiny_cfg, train={"report_to": names}), root / "run")
    return Path(summary.run_dir), uri


def _ids(run: Path) -> dict:
    return json.loads((run / "trackers.json").read_text())


def _same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())[:10]
    assert all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)


def test_mlflow_holds_the_runs_metrics_params_and_name(tracked):
    if not HAVE["mlflow"]:
        pytest.skip("the mlflow extra: pip install 'flaxner[mlflow]'")
    from mlflow.tracking import MlflowClient

    run, uri = tracked
    got, info = mlflow_metrics(uri, _ids(run)["mlflow"])
    _same(got, metrics_by_name(run))
    assert ("test/f1", 12) in got and ("eval/f1_PER", 6) in got and ("train/learning_rate", 2) in got
    assert info.info.run_name == run.name and info.info.status == "FINISHED"
    assert info.data.params["train.learning_rate"] == "0.001" and info.data.params["name"] == "tiny"
    assert MlflowClient(tracking_uri=uri).get_experiment(info.info.experiment_id).name == "flaxner"


def test_wandb_offline_run_holds_the_runs_metrics(tracked):
    if not HAVE["wandb"]:
        pytest.skip("the wandb extra: pip install 'flaxner[wandb]'")
    run, _ = tracked
    _same(wandb_metrics(run, _ids(run)["wandb"]), metrics_by_name(run))
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


def test_a_resumed_run_continues_its_mlflow_run_and_replays_into_a_new_wandb_run(tiny_cfg, tmp_path, monkeypatch):
    """Stopped at step 7 (after the first epoch's evaluation) reporting to MLflow; resumed reporting to MLflow and
    W&B: one MLflow run holds every row once; the W&B run holds them all too, the earlier ones replayed."""
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'flaxner[mlflow]'")
    pytest.importorskip("wandb", reason="the wandb extra: pip install 'flaxner[wandb]'")
    uri, out = _env(monkeypatch, tmp_path), tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 7)
        with pytest.raises(Interrupted, match="at step 7"):
            train(replace(tiny_cfg, train={"report_to": ("mlflow",)}), out)
    first = _ids(out)
    assert set(first) == {"mlflow"}
    train(replace(tiny_cfg, train={"report_to": ("mlflow", "wandb")}), out, resume=True)
    ids, want = _ids(out), metrics_by_name(out)
    assert ids["mlflow"] == first["mlflow"] and set(ids) == {"mlflow", "wandb"}
    assert any(step < 7 for _, step in want) and any(step > 7 for _, step in want)
    got, info = mlflow_metrics(uri, ids["mlflow"])
    _same(got, want)
    assert info.info.status == "FINISHED"
    _same(wandb_metrics(out, ids["wandb"]), want)
