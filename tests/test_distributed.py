"""Multi-host training: the single-process behaviour of flaxner.training.distributed (fast), and real runs of 2 localhost
processes through `flaxner train --coordinator-address ...` compared with 1 process holding as many devices
(marker `multihost`, deselected by default: `pytest -m multihost tests/test_distributed.py`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flaxner.training import distributed
from flaxner.cli import build_parser, main
from flaxner.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parent.parent
# One train shape and one eval shape, no test split: the runs spend their time training, not compiling.
RECIPE = ["data.buckets=[64,512]", "train.eval_test=false"]
LAUNCH_S = 900  # per launch; a quiet 2-core machine needs well under a minute


# -- one process -----------------------------------------------------------------------------------------------

def test_single_process_collectives_are_plain():
    import jax.numpy as jnp

    assert distributed.is_primary()
    assert distributed.agree(True) is True and distributed.agree(0) is False
    out = distributed.fetch({"a": jnp.arange(6).reshape(2, 3), "b": jnp.float32(2.5)})
    assert isinstance(out["a"], np.ndarray) and out["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert float(out["b"]) == 2.5
    assert distributed.broadcast("runs/x") == "runs/x"


def test_check_same_dir_is_a_no_op_in_one_process(tmp_path):
    distributed.check_same_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_initialize_skips_without_distributed(tiny_cfg, monkeypatch):
    import jax

    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: called.append(a))
    distributed.initialize(tiny_cfg.train)
    assert called == []
    # already initialised (Ray Train's JaxTrainer does it itself): never a second time
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    cfg = load_config("tiny", ["train.distributed=true"])
    distributed.initialize(cfg.train)
    assert called == []
    # unset keys go to JAX as None, so it detects them from SLURM / Open MPI / Kubernetes
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    distributed.initialize(cfg.train)
    assert called == [(None, None, None)]
    cfg = load_config("tiny", ["train.distributed=true", "train.coordinator_address=h0:1234",
                               "train.num_processes=4", "train.process_id=0"])
    distributed.initialize(cfg.train)
    assert called[-1] == ("h0:1234", 4, 0)
    # JAX's own join timeout (its C++ abort) lies past train.distributed_timeout, where flaxner's line comes first
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: called.append(k))
    distributed.initialize(load_config("tiny", ["train.distributed=true", "train.distributed_timeout=7"]).train)
    assert called[-1] == {"initialization_timeout": 67}
    # an error of JAX's own propagates, and the watchdog stands down (it would end this process otherwise)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        distributed.initialize(load_config("tiny", ["train.distributed=true", "train.distributed_timeout=1"]).train)
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name == "flaxner-join-watchdog"]


def test_stop_signals_on_and_off_the_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    with distributed.StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)  # the Python handler runs before the next line
    assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    errors = []

    def worker():  # a Ray Train worker runs train() in a thread, where signal.signal raises
        try:
            with distributed.StopSignals() as s:
                errors.append(s.signum)
        except Exception as e:  # noqa: BLE001 - the assertion below names it
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == [0]


@pytest.mark.parametrize("overrides, message", [
    (["train.process_id=2", "train.num_processes=2", "train.distributed=true"], "not below train.num_processes"),
    (["train.coordinator_address=h0", "train.distributed=true"], "HOST:PORT"),
    (["train.num_processes=-1", "train.distributed=true"], "train.num_processes"),
    (["train.num_processes=2"], "train.distributed is false"),
])
def test_launch_keys_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_flags_set_the_keys_and_distributed(tmp_path):
    from flaxner.cli import _launch_overrides

    args = build_parser().parse_args(["train", "--config", "tiny", "--coordinator-address", "10.0.0.1:1234",
                                      "--num-processes", "2", "--process-id", "1"])
    cfg = load_config("tiny", args.overrides + _launch_overrides(args))
    t = cfg.train
    assert (t.distributed, t.coordinator_address, t.num_processes, t.process_id) == (True, "10.0.0.1:1234", 2, 1)
    assert _launch_overrides(build_parser().parse_args(["train"])) == []
    # launch settings are per launch: the saved config must not hand process 0's id to every resumed host
    save_config(cfg, tmp_path / "config.yaml")
    saved = load_config(tmp_path / "config.yaml").train
    assert (saved.distributed, saved.coordinator_address, saved.num_processes, saved.process_id) == (True, "", 0, -1)


def test_cli_reports_a_bad_flag_in_one_line(capsys):
    assert main(["train", "--config", "tiny", "--num-processes", "2", "--process-id", "5"]) == 2
    assert "train.process_id: 5 is not below train.num_processes=2" in capsys.readouterr().err


# -- several processes -------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs the CLI; on process FLAXNER_TEST_SIGTERM_PROC it sends itself a real SIGTERM at step boundary
# FLAXNER_TEST_SIGTERM_AT (as a scheduler would), so the test does not race a fast run.
_CLI = """
import os, signal, sys
import flaxner.training.distributed as d
at, proc = int(os.environ.get("FLAXNER_TEST_SIGTERM_AT", 0)), os.environ.get("FLAXNER_TEST_SIGTERM_PROC")
real, calls = d.agree, [0]
def agree(flag):
    calls[0] += 1
    if at and calls[0] == at and sys.argv[sys.argv.index("--process-id") + 1] == proc:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(flag)
d.agree = agree
from flaxner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _launch(out: Path, processes: int, devices: int, cache: str, *flags: str, dirs: list[Path] | None = None,
            env: dict | None = None) -> list[tuple[int, str]]:
    """Start `processes` processes of `flaxner train` with `devices` CPU devices each; (exit code, log) each."""
    port, procs = _free_port(), []
    for i in range(processes):
        dist = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(processes),
                "--process-id", str(i)] if processes > 1 else []
        cmd = [sys.executable, "-c", _CLI, "train", "--config", "tiny", "--output-dir", str(dirs[i] if dirs else out),
               *dist, *flags, *RECIPE, f"train.compilation_cache={cache}"]
        e = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
             "JAX_PLATFORMS": "cpu", **(env or {})}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    results = []
    for p in procs:
        try:
            log, _ = p.communicate(timeout=LAUNCH_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, log))
    return results


def _ok(results: list[tuple[int, str]]) -> None:
    for i, (rc, log) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc}:\n{log[-3000:]}"


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run / "model" / "model.safetensors")


def _assert_close(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory, cache) -> dict[str, Path]:
    """A 2 processes x 2 devices run and a 1 process x 4 devices run of the same recipe, launched together: every
    gradient is reduced across devices of one host and across hosts."""
    root = tmp_path_factory.mktemp("mh")
    runs = {"2x2": root / "2x2", "1x4": root / "1x4"}
    results = {}
    threads = [threading.Thread(target=lambda k=k, n=n, d=d: results.__setitem__(k, _launch(runs[k], n, d, cache)))
               for k, n, d in (("2x2", 2, 2), ("1x4", 1, 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in runs:
        _ok(results[k])
    return runs


@pytest.mark.multihost
def test_two_hosts_of_two_devices_train_as_one_process_with_four(two_hosts):
    _assert_close(two_hosts["2x2"], two_hosts["1x4"], 1e-5)
    multi, single = _metrics(two_hosts["2x2"]), _metrics(two_hosts["1x4"])
    # written once, by process 0: the same rows as the single process's, none twice
    assert [(r["type"], r["step"]) for r in multi] == [(r["type"], r["step"]) for r in single]
    assert len({json.dumps(r, sort_keys=True) for r in multi}) == len(multi)
    for a, b in zip(multi, single):
        for k in ("loss", "f1", "train_loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-5), (a, b)
    assert not (two_hosts["2x2"] / distributed.TOKEN_FILE).exists()
    saved = load_config(two_hosts["2x2"] / "config.yaml").train
    assert saved.distributed and saved.process_id == -1 and saved.coordinator_address == ""


@pytest.mark.multihost
def test_sigterm_on_one_host_saves_and_stops_both_then_resume_matches(two_hosts, tmp_path, cache):
    out = tmp_path / "stopped"
    # process 1 alone is signalled, after its 3rd step: both must save step 4 and exit as interrupted
    stopped = _launch(out, 2, 2, cache, env={"FLAXNER_TEST_SIGTERM_AT": "3", "FLAXNER_TEST_SIGTERM_PROC": "1"})
    for i, (rc, log) in enumerate(stopped):
        assert rc == 128 + signal.SIGTERM, f"process {i} exited {rc}:\n{log[-3000:]}"
        assert "stopped by signal 15 at step 4;" in log, log[-2000:]
    assert sorted(int(p.name) for p in (out / "checkpoints" / "last").iterdir() if p.name.isdigit()) == [4]
    assert [r["step"] for r in _metrics(out)] == [2, 4]
    resumed = _launch(out, 2, 2, cache, "--resume")
    _ok(resumed)
    _assert_close(out, two_hosts["2x2"], 1e-6)
    assert [(r["type"], r["step"]) for r in _metrics(out)] == [(r["type"], r["step"])
                                                               for r in _metrics(two_hosts["2x2"])]


@pytest.mark.multihost
def test_hosts_with_different_output_folders_stop_with_one_clear_error(tmp_path, cache):
    dirs = [tmp_path / "host0", tmp_path / "host1"]
    results = _launch(tmp_path, 2, 1, cache, dirs=dirs)
    for i, (rc, log) in enumerate(results):
        assert rc == 2, f"process {i} exited {rc}:\n{log[-3000:]}"
        assert "the hosts do not share the output folder: process 1" in log, log[-2000:]
    assert not (dirs[0] / "checkpoints").exists() and not (dirs[1] / "checkpoints").exists()


@pytest.mark.multihost
def test_a_process_started_alone_ends_with_one_timeout_line(tmp_path, cache):
    """Process 0 of 2 started without process 1: after train.distributed_timeout, one line naming the flags and
    the key, exit 2, no run folder (JAX alone aborts after 300 s and heartbeats, with a C++ stack trace)."""
    out, addr = tmp_path / "run", f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "flaxner.cli", "train", "--config", "tiny", "--output-dir", str(out),
           "--coordinator-address", addr, "--num-processes", "2", "--process-id", "0",
           "train.distributed_timeout=5", f"train.compilation_cache={cache}"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=LAUNCH_S)
    assert time.monotonic() - t0 < 120
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == (
        f"flaxner train: error: process 0 of 2 processes: they did not all join the coordinator {addr} within 5 s "
        f"(train.distributed_timeout): start every process with the same --coordinator-address and "
        f"--num-processes, each with its own --process-id, or raise train.distributed_timeout")
    assert "Check failure" not in p.stderr and not out.exists()


# Trainer habits on several hosts: accumulation, evaluations between epochs, early stopping, warm-up by ratio and
# TensorBoard, against one process holding as many devices.
HABITS = ["train.grad_accum=2", "train.eval_every=2", "train.patience=1", "train.warmup_ratio=0.2",
          "train.report_to=tensorboard"]


@pytest.mark.multihost
def test_two_hosts_accumulate_evaluate_and_stop_as_one_process(tmp_path, cache):
    runs = {"2x1": tmp_path / "2x1", "1x2": tmp_path / "1x2"}
    results = {}
    threads = [threading.Thread(target=lambda k=k, n=n, d=d: results.__setitem__(
        k, _launch(runs[k], n, d, cache, *HABITS))) for k, n, d in (("2x1", 2, 1), ("1x2", 1, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in runs:
        _ok(results[k])
    _assert_close(runs["2x1"], runs["1x2"], 1e-5)
    multi, single = _metrics(runs["2x1"]), _metrics(runs["1x2"])
    assert [(r["type"], r["step"], r.get("epoch")) for r in multi] == [(r["type"], r["step"], r.get("epoch"))
                                                                      for r in single]
    assert any(r["type"] == "eval" and r["epoch"] != int(r["epoch"]) for r in multi)  # one between epochs
    for a, b in zip(multi, single):
        for k in ("loss", "f1", "train_loss", "learning_rate"):
            if k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-5), (a, b)
    sa, sb = (json.loads((runs[k] / "summary.json").read_text()) for k in ("2x1", "1x2"))
    assert (sa["steps"], sa["best_step"], sa["stopped_early"]) == (sb["steps"], sb["best_step"], sb["stopped_early"])
    assert len(list((runs["2x1"] / "tensorboard").iterdir())) == 1  # written by process 0 only


@pytest.mark.multihost
@pytest.mark.trackers
def test_two_hosts_report_to_mlflow_and_wandb_from_process_0_only(tmp_path, cache):
    """Two processes reporting to MLflow and W&B make one MLflow run and one W&B run (process 0's), holding the
    rows of metrics.jsonl."""
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'flaxner[mlflow]'")
    pytest.importorskip("wandb", reason="the wandb extra: pip install 'flaxner[wandb]'")
    from mlflow.tracking import MlflowClient

    from helpers import metrics_by_name, mlflow_metrics, tracker_env, wandb_metrics

    env, out = tracker_env(tmp_path), tmp_path / "run"
    _ok(_launch(out, 2, 1, cache, "train.report_to=[mlflow,wandb]", "train.epochs=1", env=env))
    ids, want = json.loads((out / "trackers.json").read_text()), metrics_by_name(out)
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [ids["mlflow"]]
    got = mlflow_metrics(env["MLFLOW_TRACKING_URI"], ids["mlflow"])[0]
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    assert [p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*")] == [ids["wandb"]]
    wb = wandb_metrics(out, ids["wandb"])
    assert wb.keys() == want.keys() and all(wb[k] == pytest.approx(want[k], rel=1e-6) for k in want)
