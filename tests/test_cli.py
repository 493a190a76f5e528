import json
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
    assert (out / "model" / "flax_model.msgpack").is_file()
    scores = main(["eval", "--model", str(out), "--split", "test", "--limit", "20"])
    assert scores == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sentences"] == 20 and 0 <= printed["f1"] <= 1 and "per_type" in printed


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "tiny", "train.nope=1"], "unknown key"),
    (["train", "--config", "does-not-exist.yaml"], "config file not found"),
    (["train", "--config", "tiny", "data.source=/no/such/folder"], "no such folder"),
    (["train", "--resume"], "--resume needs --output-dir"),
])
def test_errors_are_clear_and_early(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


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
