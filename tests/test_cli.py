import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flaxner.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_cli_runs_and_prints_table(tmp_path, capsys, compile_cache):
    out = tmp_path / "run"
    code = main(["train", "--config", "tiny", "--output-dir", str(out), "train.epochs=1", "train.eval_test=false",
                 f"train.compilation_cache={compile_cache}"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| Training Loss | Epoch | Step |" in text and f"run folder: {out}" in text
    assert "the exported model):\n| Type | Precision | Recall | F1 | Support |" in text  # the per-type report
    assert (out / "model" / "flax_model.msgpack").is_file()
    scores = main(["eval", "--model", str(out), "--split", "test", "--limit", "20"])
    assert scores == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout stays one JSON object; the table goes to stderr
    assert printed["sentences"] == 20 and 0 <= printed["f1"] <= 1 and "per_type" in printed
    assert f"| micro avg | {printed['precision']:.4f} | {printed['recall']:.4f} | {printed['f1']:.4f} |" in captured.err


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "tiny", "train.nope=1"], "unknown key"),
    (["train", "--config", "does-not-exist.yaml"], "config file not found"),
    (["train", "--config", "tiny", "data.source=/no/such/folder"], "no such folder"),
    (["train", "--resume"], "--resume needs --output-dir"),
])
def test_errors_are_clear_and_early(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default run folder (runs/tiny-<time>) would go
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no empty run folder left behind


def test_script_entry_point_help():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--output-dir" in out.stdout and "--resume" in out.stdout


def test_overrides_go_anywhere_on_the_line():
    from flaxner.cli import parse_args

    args = parse_args(["train", "--config", "quickstart", "data.limit=10", "--output-dir", "runs/x",
                       "train.epochs=1"])
    assert args.overrides == ["data.limit=10", "train.epochs=1"] and args.output_dir == "runs/x"
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", "quickstart", "--output-dir", "runs/x", "--no-such-flag"])
    with pytest.raises(SystemExit):
        parse_args(["eval", "--model", "m", "data.limit=3"])  # eval takes no overrides


def test_engine_ray_without_ray_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like to find_spec
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    assert main(["tag", str(tmp_path / "in.jsonl"), "--model", str(tmp_path), "--engine", "ray",
                 "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "flaxner tag: error: --engine ray needs Ray: pip install 'flaxner[ray]'"


@pytest.mark.parametrize("extra", [[], ["--processes", "2"], ["--engine", "ray", "-o", "out"]])
@pytest.mark.parametrize("options, message", [
    (["--lookahead", "0"], "--lookahead: must be positive, got 0"),
    (["--batch-size", "0"], "--batch-size: must be positive, got 0"),
    (["--batch-tokens", "-5"], "--batch-tokens: must be 0 (batch_size rows) or more, got -5"),
    (["--max-length", "600"], "tag.buckets: the largest bucket 512 must be >= --max-length 600"),
    (["--max-length", "64"], "tag.stride: must be below --max-length - 2 = 62, got 128"),  # stride from config.yaml
])
def test_tag_options_are_validated_before_any_work(tmp_path, capsys, options, message, extra):
    from flaxner.config import load_config, save_config

    save_config(load_config("tiny"), tmp_path / "config.yaml")  # the model's saved tag: section (stride 128)
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    assert main(["tag", str(tmp_path / "in.jsonl"), "--model", str(tmp_path), *options, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flaxner tag: error: ") and message in err[0], err
    assert not (tmp_path / "in.entities.jsonl").exists()


def test_train_refuses_windows_longer_than_the_model_s_positions(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--config", "tiny", "--output-dir", str(out), "data.max_length=600",
                 "data.buckets=[16,1024]", "train.max_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["flaxner train: error: data.max_length 600 is more than the model's "
                                 "max_position_embeddings 512"], err
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize("options, message", [
    (["--limit", "-1"], "--limit: must be 0 (all sentences) or a count, got -1"),  # was: a slice [:-1]
    (["--batch-size", "0"], "--batch-size: must be positive, got 0"),  # was: the run's eval_batch_size
])
def test_eval_options_are_validated_before_loading(tmp_path, capsys, options, message):
    assert main(["eval", "--model", str(tmp_path), *options]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"flaxner eval: error: {message}"]


@pytest.mark.parametrize("opt", [["--shard", "0/2"], ["--processes", "2"], ["--on-error", "fail"],
                                  ["--commit-every", "1"], ["--resume-stdin"]])
def test_options_the_ray_engine_does_not_take_are_refused_by_the_table(tmp_path, opt, capsys):
    from flaxner.cli import TAG_OPTIONS, main

    assert all("r" not in e for f, _, e in TAG_OPTIONS if f[-1] == opt[0])
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    rc = main(["tag", str(tmp_path / "in.jsonl"), "--engine", "ray", "--model", str(tmp_path), "-o",
               str(tmp_path / "out"), *opt])
    assert rc == 2 and f"{opt[0]} does not go with --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_of_a_split_the_data_lacks_lists_those_it_has_before_jax_loads(tmp_path):
    from flaxner.config import load_config, save_config

    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.txt", "dev.txt"):
        (data / name).write_text((ROOT / "tests" / "fixtures" / "snippet.txt").read_text())
    run = tmp_path / "run"
    run.mkdir()  # a run folder's config is all the check reads: no model is loaded
    save_config(load_config("tiny", [f"data.source={data}"]), run / "config.yaml")
    code = ("import sys\nfrom flaxner.cli import main\n"
            f"rc = main(['eval', '--model', {str(run)!r}, '--split', 'tset'])\n"
            "print('rc', rc, 'jax' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["rc", "2", "False"], done.stdout + done.stderr
    assert "no 'tset' split; the data has: train, validation" in done.stderr
