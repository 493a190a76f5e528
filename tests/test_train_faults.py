"""Fault injection for `flaxner train`: interruptions at save boundaries, saves that fail half way, damaged
checkpoints, bad configs and data, misused run folders. Each ends in a resume that reaches the uninterrupted
result, or in one clear error before any step."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest

from flaxner.training.checkpoint import CheckpointError, Checkpointer, LoopState
from flaxner.cli import main
from flaxner.config import ConfigError, replace
from flaxner.data.splits import DataError
from flaxner.rundir import RunDirError
from flaxner.training.distributed import StopSignals
from flaxner.training.train import EpochEvent, Interrupted, StepEvent, build_run, train, training_steps

from helpers import assert_same_run, interrupt_at

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def snippet_data(tmp_path_factory) -> Path:
    """A CoNLL folder with train and validation files only (the 6 snippet sentences each)."""
    d = tmp_path_factory.mktemp("snippet-data")
    for name in ("train.txt", "valid.txt"):
        shutil.copy(FIXTURES / "snippet.txt", d / name)
    return d


@pytest.fixture(scope="module")
def small_cfg(tiny_cfg, snippet_data):
    """2 epochs of 3 steps (batch 2 over 6 sentences), no test split: a run of a few seconds."""
    return replace(tiny_cfg, data={"source": str(snippet_data)},
                   train={"batch_size": 2, "eval_batch_size": 2, "log_every": 1, "save_every": 0})


@pytest.fixture(scope="module")
def small_run(small_cfg, tmp_path_factory):
    return train(small_cfg, tmp_path_factory.mktemp("ref") / "run")


def test_small_run_skips_the_missing_test_split(small_run, small_cfg, caplog, tmp_path):
    assert small_run.steps == 6 and small_run.test is None and len(small_run.history) == 2
    assert "test" not in json.loads((Path(small_run.run_dir) / "summary.json").read_text())
    with caplog.at_level(logging.INFO, logger="flaxner.training"):
        build_run(small_cfg, tmp_path / "skip")
    assert "has no 'test' split: the test evaluation is skipped" in caplog.text
    with pytest.raises(DataError, match="no 'test' split"):  # asked for explicitly: refused up front
        build_run(replace(small_cfg, train={"eval_test": True}), tmp_path / "required")
    assert not (tmp_path / "required" / "metrics.jsonl").exists()


def test_training_steps_yields_typed_events_and_stops_when_the_caller_does(small_cfg, small_run, tmp_path):
    """The loop without `train`'s handlers: the same steps and scores as the full run, stopped by not iterating."""
    from flaxner.training.export import read_metrics

    run = build_run(small_cfg, tmp_path / "run")
    events = []
    for ev in training_steps(run):
        events.append(ev)
        if isinstance(ev, EpochEvent):
            break
    run.ckpt.close()
    assert [(type(e), e.step) for e in events] == [(StepEvent, 1), (StepEvent, 2), (StepEvent, 3), (EpochEvent, 3)]
    logged = [r["loss"] for r in read_metrics(small_run.run_dir) if r["type"] == "train"]
    assert [e.losses[0] for e in events[:3]] == logged[:3]  # log_every 1: one loss per step
    assert [e.batch for e in events[:3]] == [1, 2, 3] and events[2].epoch_progress == 1.0
    assert events[-1].improved and events[-1].scores["f1"] == small_run.history[0]["f1"]
    assert (run.loop.epoch, run.loop.batch, run.step) == (1, 0, 3) and run.loop.history == small_run.history[:1]
    assert not (tmp_path / "run" / "model").exists()  # exporting is a handler of `train`, not the loop's


@pytest.mark.parametrize("save_every, stop", [(3, None), (3, 3), *(pytest.param(*c, marks=pytest.mark.slow)
                                                                  for c in ((3, 6), (2, 6), (1, 4)))])
def test_save_points_at_epoch_ends_and_stops_there_resume(small_cfg, small_run, tmp_path, monkeypatch,
                                                          save_every, stop):
    """save_every dividing an epoch's steps, and a stop at an epoch's (or the run's) last step, save each step once;
    the resumed run reaches the uninterrupted one."""
    cfg = replace(small_cfg, train={"save_every": save_every})
    out = tmp_path / "run"
    if stop:
        with monkeypatch.context() as m:
            interrupt_at(m, stop)
            with pytest.raises(Interrupted, match=f"at step {stop};"):
                train(cfg, out)
        summary = train(cfg, out, resume=True)
    else:
        summary = train(cfg, out)
    assert_same_run(summary, small_run, out)
    # and resuming the finished run is a no-op that returns its summary
    again = train(cfg, out, resume=True)
    assert again.to_json() == json.loads((out / "summary.json").read_text())


def test_context_dropout_redraws_rows_each_epoch_and_a_resume_reaches_the_uninterrupted_run(small_cfg, tmp_path,
                                                                                           monkeypatch):
    """The snippet is one document: with neighbours context and `data.context_dropout` each epoch's rows differ
    (from the rows with whole context, too), and a run stopped mid-epoch resumes onto the very same rows."""
    cfg = replace(small_cfg, data={"context": "neighbours", "context_size": 8, "context_dropout": 0.5},
                  train={"save_every": 1})
    ref = train(cfg, tmp_path / "ref")
    whole = train(replace(cfg, data={"context_dropout": 0.0}), tmp_path / "whole")
    assert [h["train_loss"] for h in ref.history] != [h["train_loss"] for h in whole.history]
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 4)
        with pytest.raises(Interrupted, match="at step 4;"):
            train(cfg, out)
    assert_same_run(train(cfg, out, resume=True), ref, out)


def test_resume_of_a_finished_run_says_so_and_exits_0(small_cfg, small_run, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    shutil.copytree(small_run.run_dir, out)
    with caplog.at_level(logging.INFO, logger="flaxner.training"):
        code = main(["train", "--resume", "--output-dir", str(out), "train.compile_workers=0"])
    assert code == 0 and "the run is already finished (6 steps); nothing to do" in caplog.text
    assert "| Training Loss |" in capsys.readouterr().out


def test_a_save_failing_half_way_resumes_to_the_same_result(small_cfg, small_run, tmp_path, monkeypatch):
    """The epoch-end save writes `best`, then dies before `last`: the resumed run evaluates that epoch again."""
    out = tmp_path / "run"
    real = Checkpointer.save

    def dying(self, step, state, loop, best=False):
        if step == 3:
            self.best.save(step, args=_args(state, loop), metrics={"f1": float(loop.best_f1)}, force=True)
            raise OSError("disk full (injected)")
        return real(self, step, state, loop, best)

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", dying)
        with pytest.raises(OSError, match="injected"):
            train(replace(small_cfg, train={"save_every": 2}), out)
    summary = train(replace(small_cfg, train={"save_every": 2}), out, resume=True)
    assert_same_run(summary, small_run, out)


def _args(state, loop):
    import orbax.checkpoint as ocp

    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(loop.to_json()))


def _damage(step_dir: Path, how: str) -> None:
    if how == "array":
        files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and "_METADATA" not in p.name
                        and p.stat().st_size > 64), key=lambda p: -p.stat().st_size)
        files[0].write_bytes(files[0].read_bytes()[:files[0].stat().st_size // 2])
    elif how == "state-metadata":
        (step_dir / "state" / "_METADATA").unlink()
    elif how == "meta":
        p = step_dir / "meta" / "metadata"
        p.write_text(p.read_text()[:20])


@pytest.mark.parametrize("how", ["array", *(pytest.param(h, marks=pytest.mark.slow) for h in ("state-metadata", "meta"))])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(small_cfg, small_run, tmp_path, monkeypatch, how,
                                                                caplog):
    cfg = replace(small_cfg, train={"save_every": 1, "keep_checkpoints": 3})
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 5)
        with pytest.raises(Interrupted):
            train(cfg, out)
    last = out / "checkpoints" / "last"
    assert sorted(int(p.name) for p in last.iterdir() if p.name.isdigit()) == [3, 4, 5]
    _damage(last / "5", how)
    with caplog.at_level(logging.WARNING, logger="flaxner.training.checkpoint"):
        summary = train(cfg, out, resume=True)
    assert f"checkpoint {last / '5'} is damaged" in caplog.text
    assert f"resuming from checkpoint {last / '4'}" in caplog.text
    assert_same_run(summary, small_run, out)


def test_no_intact_checkpoint_is_one_error_naming_the_folder(small_cfg, tmp_path, monkeypatch, capsys):
    cfg = replace(small_cfg, train={"save_every": 1, "keep_checkpoints": 2})
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(Interrupted):
            train(cfg, out)
    last = out / "checkpoints" / "last"
    for step in (1, 2):
        _damage(last / str(step), "state-metadata")
    with pytest.raises(CheckpointError, match=f"{last}: no intact checkpoint"):
        train(cfg, out, resume=True)
    assert main(["train", "--resume", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flaxner train: error: ") and "no intact checkpoint" in err[-1]
    assert "Traceback" not in "\n".join(err)


def _folder(tmp_path: Path, train_text: str, valid_text: str) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.txt").write_text(train_text)
    (d / "valid.txt").write_text(valid_text)
    return d


@pytest.mark.parametrize("train_text, valid_text, split", [
    (None, "", "validation"),
    ("", None, "train"),
    ("-DOCSTART- -X- -X- O\n\n-DOCSTART- -X- -X- O\n", None, "train"),
])
def test_an_empty_split_is_refused_before_the_first_step(small_cfg, tmp_path, capsys, train_text, valid_text, split):
    snippet = (FIXTURES / "snippet.txt").read_text()
    d = _folder(tmp_path, snippet if train_text is None else train_text, snippet if valid_text is None else valid_text)
    out = tmp_path / "run"
    code = main(["train", "--config", "tiny", "--output-dir", str(out), f"data.source={d}",
                 f"train.compilation_cache={small_cfg.train.compilation_cache}"])
    err = capsys.readouterr().err.strip().splitlines()
    name = {"train": "train.txt", "validation": "valid.txt"}[split]
    assert code == 2 and err[-1] == f"flaxner train: error: {d / name}: the {split!r} split has no sentences"
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("override, message", [
    ("data.max_length=2", "data.max_length: must be at least 3"),
    ("data.max_length=1", "data.max_length: must be at least 3"),
    ("data.limit=-1", "data.limit: must be 0 (all sentences) or a count"),
    ("train.save_every=-1", "train.save_every: must be 0 (off) or a step count"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints: must be positive"),
    ("train.log_every=0", "train.log_every: must be positive"),
    ("train.eval_test=maybe", "train.eval_test: expected one of auto, true, false"),
])
def test_bad_train_config_is_one_line(override, message, capsys):
    assert main(["train", "--config", "tiny", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_resume_refuses_changed_training_keys_and_allows_harmless_ones(small_cfg, small_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(small_run.run_dir, out)
    before = (out / "config.yaml").read_text()
    assert main(["train", "--resume", "--output-dir", str(out), "train.learning_rate=0.5", "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from" in err[0] and "train.epochs, train.learning_rate (" in err[0]
    assert (out / "config.yaml").read_text() == before
    with pytest.raises(ConfigError, match="model.name"):
        train(replace(small_cfg, model={"name": "minilm"}), out, resume=True)
    # which steps are taken and evaluated, and when the run stops, are the run's own
    with pytest.raises(ConfigError, match="train.eval_every, train.grad_accum, train.patience"):
        train(replace(small_cfg, train={"grad_accum": 2, "eval_every": 1, "patience": 1}), out, resume=True)
    # log_every, save_every, compile_workers, report_to...: the same steps and weights, so a resume may change them
    assert train(replace(small_cfg, train={"log_every": 5, "save_every": 7, "compile_workers": 0,
                                           "report_to": ("tensorboard",)}), out, resume=True).steps == 6


def test_run_folder_misuse_is_refused_before_loading(small_cfg, small_run, tmp_path, monkeypatch, capsys):
    import flaxner.training.train as T

    monkeypatch.setattr(T, "make_tokenizer", lambda *a: pytest.fail("loaded before refusing"))
    with pytest.raises(RunDirError, match="no run to resume here"):
        train(small_cfg, tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()
    existing = Path(small_run.run_dir)
    before = {p: p.stat().st_mtime_ns for p in existing.rglob("*") if p.is_file()}
    assert main(["train", "--config", "tiny", "--output-dir", str(existing)]) == 2
    assert "already holds a run; continue it with --resume, or replace it with --overwrite" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in existing.rglob("*") if p.is_file()}


@pytest.mark.parametrize("planted, flags", [("model", ["--overwrite"]), ("checkpoints", ["--overwrite"]),
                                            ("checkpoints", []), ("metrics.jsonl", ["--resume"]),
                                            ("checkpoints/last", ["--resume"])])
def test_run_folder_symlinks_are_refused_never_written_through(small_cfg, tmp_path, monkeypatch, capsys, planted,
                                                               flags):
    """A symlink at a run file or folder (`model/`, `checkpoints/`, `metrics.jsonl`...): refused before loading, in
    every mode; its target is neither emptied nor written."""
    import flaxner.training.train as T

    monkeypatch.setattr(T, "make_tokenizer", lambda *a: pytest.fail("loaded before refusing"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    out = tmp_path / "run"
    out.mkdir()
    if flags:
        (out / "config.yaml").write_text("name: earlier\n")
    (out / planted).parent.mkdir(exist_ok=True)
    (out / planted).symlink_to(outside if "." not in planted else outside / "keep.txt")
    assert main(["train", "--config", "tiny", "--output-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{out / planted}: is a symlink" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (outside / "keep.txt").read_text() == "mine"
    assert (out / planted).is_symlink()


def test_overwrite_replaces_the_run(small_cfg, small_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(small_run.run_dir, out)
    (out / "notes.txt").write_text("mine")
    summary = train(replace(small_cfg, train={"epochs": 1}), out, overwrite=True)
    assert summary.steps == 3 and len(json.loads((out / "summary.json").read_text())["history"]) == 1
    assert sorted(int(p.name) for p in (out / "checkpoints" / "last").iterdir() if p.name.isdigit()) == [3]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_stop_signals_off_the_main_thread_install_nothing():
    errors = []

    def worker():
        try:
            with StopSignals() as stop:
                assert stop.signum == 0
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == []


def test_loop_state_reads_an_old_checkpoints_meta():
    old = {"epoch": 1, "batch": 0, "best_f1": 0.5, "history": [{"epoch": 1, "f1": 0.5}], "labels": ["O", "B-PER"],
           "epoch_loss": 0.0, "epoch_batches": 0}
    loop = LoopState.from_json(old)
    saved = loop.to_json()
    assert {k: saved[k] for k in old} == old and loop.labels == ["O", "B-PER"] and loop.best_f1 == 0.5
    # what older runs did not save starts as a run without eval_every or patience would have it
    assert (loop.last_eval, loop.bad_evals, loop.best_per_type) == (-1, 0, {})


def test_card_names_the_data_and_base_model_used(small_run, snippet_data):
    card = (Path(small_run.run_dir) / "README.md").read_text()
    assert f"on {snippet_data.name} (a local data folder)" in card and "conll2003" not in card
    assert "randomly initialised BERT" in card
    cfg = json.loads((Path(small_run.run_dir) / "model" / "config.json").read_text())
    ck = Checkpointer(Path(small_run.run_dir) / "checkpoints")
    labels = ck.read_labels()  # the inventory the run trained with, as its checkpoints store it
    ck.close()
    assert [cfg["id2label"][str(i)] for i in range(len(labels))] == labels and len(cfg["id2label"]) == len(labels)
