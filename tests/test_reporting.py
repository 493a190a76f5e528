"""`flaxner.training.reporting.Reporters` without the trackers' packages (stand-ins record what they get): every
row reaches every writer under one naming, a resumed run's tracker gets no row twice and a new one the rows from
before, and a tracker that fails is logged while metrics.jsonl keeps every row."""

from __future__ import annotations

import json
import logging

import pytest

from flaxner.config import replace
from flaxner.training import reporting
from flaxner.training.export import read_metrics
from flaxner.training.reporting import Reporters, scalars

ROWS = [{"type": "train", "step": 2, "epoch": 0.5, "loss": 2.0, "learning_rate": 1e-3},
        {"type": "train", "step": 4, "epoch": 1.0, "loss": 1.5, "learning_rate": 5e-4},
        {"type": "eval", "step": 4, "epoch": 1, "f1": 0.5, "loss": 1.2, "stopped": False,
         "per_type": {"PER": {"f1": 0.25, "precision": 0.5, "recall": 0.2, "support": 3}}},
        {"type": "train", "step": 6, "epoch": 1.5, "loss": 1.0, "learning_rate": 2e-4}]


class Stand:
    """A tracker stand-in: the rows it got, by its run id; `fail_at` makes write raise at that step."""

    got: dict[str, list[dict]] = {}
    fail_at: int | None = None

    def __init__(self, rd, cfg, run_id=None):
        self.continued = run_id is not None
        self.run_id = run_id or f"run{len(Stand.got)}"
        Stand.got.setdefault(self.run_id, [])
        self.closed = False

    def write(self, row):
        if row["step"] == Stand.fail_at:
            raise ConnectionError("tracking server out of reach")
        Stand.got[self.run_id].append(row)

    def close(self):
        self.closed = True


@pytest.fixture
def stand(monkeypatch):
    Stand.got, Stand.fail_at = {}, None
    monkeypatch.setattr(reporting, "TRACKERS", {"mlflow": Stand, "wandb": Stand})
    return Stand


def _cfg(tiny_cfg, *names):
    return replace(tiny_cfg, train={"report_to": names})


def test_scalars_name_every_number_of_a_row():
    assert scalars(ROWS[2]) == {"eval/epoch": 1, "eval/f1": 0.5, "eval/loss": 1.2, "eval/f1_PER": 0.25}
    assert scalars(ROWS[0]) == {"train/epoch": 0.5, "train/loss": 2.0, "train/learning_rate": 1e-3}


def test_every_row_reaches_each_tracker_once_and_the_ids_are_kept(tiny_cfg, tmp_path, stand):
    rep = Reporters(tmp_path, _cfg(tiny_cfg, "mlflow", "wandb"))
    for r in ROWS:
        rep.write(r)
    rep.close()
    ids = json.loads((tmp_path / "trackers.json").read_text())
    assert set(ids) == {"mlflow", "wandb"} and ids["mlflow"] != ids["wandb"]
    assert stand.got == {ids["mlflow"]: ROWS, ids["wandb"]: ROWS} and read_metrics(tmp_path) == ROWS


def test_a_resumed_run_continues_its_tracker_without_repeats_and_a_new_one_gets_the_rows_before(
        tiny_cfg, tmp_path, stand):
    rep = Reporters(tmp_path, _cfg(tiny_cfg, "mlflow"))
    for r in ROWS:  # written up to step 6; the last checkpoint is step 4
        rep.write(r)
    rep.close()
    first = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    rep = Reporters(tmp_path, _cfg(tiny_cfg, "mlflow", "wandb"), resumed_at=4)
    for r in ROWS[3:] + [{"type": "train", "step": 8, "loss": 0.5}]:  # the resumed steps: 5 on
        rep.write(r)
    rep.close()
    ids = json.loads((tmp_path / "trackers.json").read_text())
    assert ids["mlflow"] == first
    every = ROWS + [{"type": "train", "step": 8, "loss": 0.5}]
    assert stand.got[first] == every  # step 6 was there already: not sent twice
    assert stand.got[ids["wandb"]] == every  # the rows kept from before (to step 4), then the resumed ones
    assert read_metrics(tmp_path) == every


def test_a_failing_tracker_is_logged_once_and_training_goes_on(tiny_cfg, tmp_path, stand, caplog):
    stand.fail_at = 4
    rep = Reporters(tmp_path, _cfg(tiny_cfg, "wandb"))
    with caplog.at_level(logging.WARNING, logger="flaxner.training.reporting"):
        for r in ROWS:
            rep.write(r)
        rep.close()
    (got,) = stand.got.values()
    assert got == [ROWS[0], ROWS[3]] and read_metrics(tmp_path) == ROWS
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "ConnectionError: tracking server out of reach" in warned[0]
    assert "2 rows did not reach it" in warned[1]


def test_wandb_without_a_key_is_refused_before_anything_loads(tmp_path, monkeypatch):
    from flaxner.training.reporting import wandb_ready

    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert not wandb_ready()  # no key anywhere: wandb.init would fail after the model loaded
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password KEY\n")
    assert wandb_ready()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not wandb_ready()  # the key is for another server
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_ready()
