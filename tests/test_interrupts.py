"""SIGINT/SIGTERM during work that keeps nothing yet (loading, tracing, compiling) end the process at once, with
one line, exit 128 + signal and no partial output (flaxner/interrupts.py; docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A child that arms PromptExit, registers a clean-up removing a file, then blocks in C for a minute (time.sleep
# and a GIL-free wait stand for an XLA compile); after `disarm` its own handler takes the signal.
CHILD = """
import signal, sys, time
from pathlib import Path
from flaxner import interrupts
part = Path(sys.argv[1]); part.write_text("half")
guard = interrupts.PromptExit("test", "while compiling")
with guard:
    interrupts.on_interrupt(lambda: (part.unlink(), f"removed {part}")[1])
    if sys.argv[2] == "disarm":
        guard.disarm()
        signal.signal(signal.SIGTERM, lambda s, f: (print("graceful", flush=True), sys.exit(7)))
    print("ready", flush=True)
    time.sleep(60)
"""


def _start(tmp_path, mode="armed"):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "out.part"), mode], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_armed_work_at_once_with_one_line_and_no_partial_output(tmp_path, signum):
    p = _start(tmp_path)
    t0 = time.monotonic()
    p.send_signal(signum)
    out, err = p.communicate(timeout=20)
    assert time.monotonic() - t0 < 5
    assert p.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [f"flaxner test: interrupted by {name} while compiling; removed "
                                        f"{tmp_path / 'out.part'}"]
    assert not (tmp_path / "out.part").exists()


def test_after_disarm_the_callers_handler_takes_the_signal(tmp_path):
    p = _start(tmp_path, "disarm")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert (p.returncode, out.strip(), err.strip()) == (7, "graceful", "")
    assert (tmp_path / "out.part").read_text() == "half"


def test_an_error_leaving_armed_work_cleans_up_and_handlers_come_back(tmp_path):
    from flaxner import interrupts

    part = tmp_path / "x.part"
    part.write_text("half")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="bad data"):
        with interrupts.PromptExit("test", "while loading"):
            interrupts.on_interrupt(lambda: part.unlink())
            raise ValueError("bad data")
    assert not part.exists()
    assert signal.getsignal(signal.SIGTERM) is before and signal.set_wakeup_fd(-1) == -1
    interrupts.on_interrupt(lambda: 1 / 0)  # no armed PromptExit: nothing is registered, nothing runs


# `flaxner tag` / `flaxner eval` with their model load standing still (a sleep in C, as a long load or compile)
SLOW_LOAD = """
import sys, time
import flaxner.tagging.tagger as T, flaxner.training.evaluate as E
def slow(*a, **k):
    print("ready", flush=True)
    time.sleep(60)
T.Tagger.from_pretrained = classmethod(lambda cls, *a, **k: slow())
E.predict_split = slow
from flaxner.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command, what", [
    ("tag", "while loading the model; nothing written"),
    ("eval", "while loading, compiling or scoring; nothing written")])
def test_tag_and_eval_stopped_while_loading_end_at_once(tmp_path, command, what):
    out = tmp_path / "out.jsonl"
    args = (["tag", str(ROOT / "docs/sample.jsonl"), "--model", str(ROOT / "tests/fixtures/old-run-tiny"), "-o",
             str(out)] if command == "tag" else ["eval", "--model", str(ROOT / "tests/fixtures/old-run-tiny")])
    p = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, *args], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert time.monotonic() - t0 < 5 and p.returncode == 143
    assert err.strip().splitlines()[-1] == f"flaxner {command}: interrupted by SIGTERM {what}"
    assert list(tmp_path.iterdir()) == []


def _wait_for(stream, text: str, timeout: float) -> list[str]:
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen in {timeout} s: {''.join(seen)[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_train_stopped_while_compiling_ends_at_once_and_leaves_no_run(tmp_path, signum):
    """A 160-layer unrolled model is initialized and compiled for minutes on CPU: a signal then (once the data's
    labels are logged and the model is being built) ends `flaxner train` within seconds, with one line, 128 +
    signal, and no run folder."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flaxner.cli", "train", "--config", "tiny", "--output-dir", str(out),
           "model.num_layers=160", "train.compile_workers=0", f"model.name={ROOT / 'tests/fixtures/tiny-bert'}",
           f"train.compilation_cache={tmp_path / 'cache'}"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(p.stderr, "labels:", 300)
        time.sleep(5)  # building the model: XLA compiles its initializer
        assert out.is_dir() and p.poll() is None
        t0 = time.monotonic()
        p.send_signal(signum)
        err = p.stderr.read()
        p.wait(timeout=30)
    finally:
        p.kill()
    assert time.monotonic() - t0 < 10
    assert p.returncode == 128 + signum
    assert err.strip().splitlines()[-1] == (f"flaxner train: interrupted by {signal.Signals(signum).name} while "
                                            f"loading and compiling, before the first step; removed the new run "
                                            f"folder {out}")
    assert not out.exists()
