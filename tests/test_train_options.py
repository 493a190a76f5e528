"""What a Trainer user expects of `flaxner train`: `train.eval_every`, `train.patience`, `train.grad_accum`,
`train.warmup_ratio` and `train.report_to: [tensorboard]`, on the tiny model over the 6-sentence snippet (3 batches
of 2 an epoch, so an accumulated step of 2 leaves a short last one), each resumed to the same result; the per-type
report; and a failed start leaving no run folder."""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from flaxner.cli import main
from flaxner.config import ConfigError, load_config, replace
from flaxner.training.export import per_type_table, read_metrics
from flaxner.training.step import make_schedule
from flaxner.training.train import Interrupted, train
from helpers import assert_same_run, interrupt_at

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PATIENCE = 2


@pytest.fixture(scope="module")
def snippet_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("snippet-data")
    for name in ("train.txt", "valid.txt"):
        shutil.copy(FIXTURES / "snippet.txt", d / name)
    return d


@pytest.fixture(scope="module")
def habits_cfg(tiny_cfg, snippet_data):
    """4 epochs of 2 optimizer steps (batches 2 + 1), evaluated after every step, patience 2, warm-up a quarter;
    a learning rate so high that the F1 climbs to step 4, then collapses (the stall patience stops at step 6)."""
    return replace(tiny_cfg, data={"source": str(snippet_data)},
                   train={"learning_rate": 0.05, "batch_size": 2, "eval_batch_size": 2, "epochs": 4, "log_every": 1, "save_every": 0,
                          "grad_accum": 2, "eval_every": 1, "patience": PATIENCE, "warmup_ratio": 0.25,
                          "report_to": ("tensorboard",)})


@pytest.fixture(scope="module")
def habits_run(habits_cfg, tmp_path_factory):
    return train(habits_cfg, tmp_path_factory.mktemp("habits") / "run")


def _evals(run) -> list[dict]:
    return [r for r in read_metrics(run.run_dir) if r["type"] == "eval"]


def test_accumulated_steps_are_counted_scheduled_and_evaluated_every_step(habits_run, habits_cfg):
    evals = _evals(habits_run)
    steps = [r["step"] for r in evals]
    assert steps == list(range(1, habits_run.steps + 1)) and len(habits_run.history) == len(steps)
    # 2 optimizer steps an epoch: the first after 2 of its 3 batches, the second after the third
    assert [r["epoch"] for r in evals] == [round((s - 1) // 2 + 2 / 3, 4) if s % 2 else s // 2 for s in steps]
    schedule = make_schedule(habits_cfg.train, 8)  # 4 epochs of ceil(3 / 2) optimizer steps
    for r in read_metrics(habits_run.run_dir):
        if r["type"] == "train":
            assert r["learning_rate"] == pytest.approx(float(schedule(r["step"])), rel=1e-6), r


def test_patience_stops_after_that_many_evaluations_without_improvement(habits_run):
    f1s, best, bad, stop = [r["f1"] for r in _evals(habits_run)], -1.0, 0, None
    for i, f1 in enumerate(f1s):
        best, bad = (f1, 0) if f1 > best else (best, bad + 1)
        if bad >= PATIENCE:
            stop = i
            break
    assert stop is not None, f"the tiny run's F1s {f1s} never stalled: pick a trajectory that does"
    assert len(f1s) == stop + 1 and habits_run.stopped_early and habits_run.steps == stop + 1 < 8
    best_i = max(range(len(f1s)), key=lambda i: (f1s[i], -i))  # the first evaluation with the best F1
    assert habits_run.best_step == best_i + 1 and habits_run.best_f1 == best
    # the exported model is the best evaluation's, not the last one's
    from flaxner.training.evaluate import predict_split

    assert predict_split(habits_run.run_dir, "validation").metrics["f1"] == pytest.approx(best, abs=1e-9)
    card = (Path(habits_run.run_dir) / "README.md").read_text()
    assert "| Training Loss | Epoch | Step |" in card


def test_the_card_title_names_model_and_data_and_the_card_the_limit_and_labels(habits_run, snippet_data):
    card = (Path(habits_run.run_dir) / "README.md").read_text()
    assert f"\n# randomly initialised BERT fine-tuned for NER on {snippet_data.name}\n" in card
    labels = habits_run.labels
    assert labels[0] == "O" and {"B-PER", "I-ORG"} <= set(labels) and habits_run.train_sentences == 6
    assert (f"Trained on 6 sentences of its train split (data.limit: the first 48 of each split), with "
            f"{len(labels)} labels: {', '.join(labels)}.") in card


def _tensorboard(run_dir) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of the scalars in a run's event files, as TensorBoard shows them: a session that
    starts at step s (a resumed run: purge_step) drops what earlier sessions wrote from step s on."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    seen: dict[tuple[str, int], float] = {}
    for path in sorted((Path(run_dir) / "tensorboard").iterdir()):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: length, its CRC, the record, its CRC
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                seen = {k: v for k, v in seen.items() if k[1] < ev.step}
            for v in ev.summary.value:
                seen[(v.tag, ev.step)] = v.simple_value
    return seen


def _expected_scalars(run_dir) -> dict[tuple[str, int], float]:
    out = {}
    for r in read_metrics(run_dir):
        for k in ("loss", "learning_rate", "f1", "precision", "train_loss"):
            if k in r:
                out[(f"{r['type']}/{k}", r["step"])] = r[k]
        for label, s in (r.get("per_type") or {}).items():
            out[(f"{r['type']}/f1_{label}", r["step"])] = s["f1"]
    return out


def test_tensorboard_holds_the_metrics_rows(habits_run):
    board, rows = _tensorboard(habits_run.run_dir), _expected_scalars(habits_run.run_dir)
    assert rows and {k: board.get(k) for k in rows} == pytest.approx(rows, rel=1e-6)


# Stopped after step 5, before its mid-epoch evaluation (the resumed run owes it), or after step 6 with one
# evaluation without improvement counted (the resumed run must count on from it to the stop).
@pytest.mark.parametrize("at", [pytest.param(5, marks=pytest.mark.slow), 6])
def test_a_resumed_run_continues_accumulation_patience_and_tensorboard_exactly(habits_cfg, habits_run, tmp_path,
                                                                             monkeypatch, at):
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        interrupt_at(m, at)
        with pytest.raises(Interrupted, match=f"at step {at}"):
            train(habits_cfg, out)
    summary = train(habits_cfg, out, resume=True)
    assert_same_run(summary, habits_run, out)
    assert (summary.stopped_early, summary.best_step) == (habits_run.stopped_early, habits_run.best_step)
    assert [(r["type"], r["step"]) for r in read_metrics(out)] == [(r["type"], r["step"])
                                                                   for r in read_metrics(habits_run.run_dir)]
    assert _tensorboard(out).keys() == _tensorboard(habits_run.run_dir).keys()
    assert train(habits_cfg, out, resume=True).steps == summary.steps  # stopped early: finished, nothing to do


def test_warmup_ratio_is_warmup_steps_of_the_run(tiny_cfg):
    for ratio, total in ((0.1, 100), (0.05, 30), (0.25, 6)):
        by_ratio = make_schedule(replace(tiny_cfg, train={"warmup_ratio": ratio}).train, total)
        by_steps = make_schedule(replace(tiny_cfg, train={"warmup_steps": math.ceil(ratio * total)}).train, total)
        assert [float(by_ratio(s)) for s in range(total + 1)] == [float(by_steps(s)) for s in range(total + 1)]
    assert float(make_schedule(replace(tiny_cfg, train={"warmup_ratio": 0.1}).train, 100)(5)) == \
        pytest.approx(tiny_cfg.train.learning_rate / 2)


@pytest.mark.parametrize("overrides, message", [
    (["train.warmup_steps=10", "train.warmup_ratio=0.1"], "are both set: set one"),
    (["train.warmup_ratio=1.0"], r"train.warmup_ratio: must be in \[0, 1\)"),
    (["train.grad_accum=0"], "train.grad_accum: must be positive"),
    (["train.patience=-1"], "train.patience: must be 0"),
    (["train.report_to=comet"], r"train.report_to\[0\]: expected one of tensorboard, mlflow, wandb, got 'comet'"),
])
def test_bad_values_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)
    assert load_config("tiny", ["train.report_to=tensorboard"]).train.report_to == ("tensorboard",)
    assert load_config("tiny", ["train.report_to=[mlflow,wandb]"]).train.report_to == ("mlflow", "wandb")


def test_per_type_table_is_seqevals_report():
    from seqeval.metrics import classification_report

    from flaxner.training.evaluate import compute_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-LOC", "B-PER"]]
    table = per_type_table(compute_metrics(gold, pred)).splitlines()
    ref = classification_report(gold, pred, output_dict=True, zero_division=0)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert set(rows) == {"LOC", "ORG", "PER", "micro avg"}
    for label, cells in rows.items():
        r = ref[label]
        assert cells == [f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1-score']:.4f}", str(r["support"])]


@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboardX"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_reporter_package_is_one_line_before_anything_is_written(monkeypatch, tmp_path, capsys, name,
                                                                           module):
    import flaxner.training.reporting as reporting

    real = reporting.importlib.util.find_spec
    monkeypatch.setattr(reporting.importlib.util, "find_spec", lambda n: None if n == module else real(n))
    assert main(["train", "--config", "tiny", "--output-dir", str(tmp_path / "run"),
                 f"train.report_to=[tensorboard,{name}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"train.report_to: {name} needs the {module} package: pip install 'flaxner[{name}]'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, message", [("missing", "no such folder"), ("line", "train.txt:4: tag 'line'"),
                                          ("tag", "valid.txt:1: tag 'B-NEW' is not in the label set")])
def test_bad_data_is_reported_before_jax_loads_and_leaves_no_run_folder(tmp_path, bad, message):
    data = tmp_path / "data"
    if bad != "missing":
        data.mkdir()
        (data / "train.txt").write_text("EU B-ORG\nrejects O\n\nbroken line\n" if bad == "line" else "EU B-ORG\n")
        (data / "valid.txt").write_text("EU B-NEW\n")
    out = tmp_path / "runs" / "new"
    code = ("import sys\nfrom flaxner.cli import main\n"
            f"rc = main(['train', '--config', 'tiny', '--output-dir', {str(out)!r}, 'data.source={data}'])\n"
            "print('rc', rc, 'jax' in sys.modules, 'datasets' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["rc", "2", "False", "False"], done.stdout + done.stderr
    assert message in done.stderr and not out.exists()


def test_a_start_that_fails_later_leaves_no_run_folder_but_keeps_the_users(tiny_cfg, tmp_path):
    bad = replace(tiny_cfg, model={"name": str(tmp_path / "no-model"), "random_init": False})
    out = tmp_path / "runs" / "new"
    with pytest.raises(OSError):
        train(bad, out)
    assert not out.exists()
    out.mkdir(parents=True)  # a folder the user made is theirs: kept
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OSError):
        train(bad, out)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
