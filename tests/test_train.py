import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxner.config import replace
from flaxner.data.splits import Encoded
from flaxner.data.labels import IGNORE
from flaxner.runtime import setup_runtime
from flaxner.training.step import TrainStep, init_state, loss_fn, make_optimizer, make_schedule
from flaxner.training.train import loss_denominator, train
from helpers import assert_same_run, fixed_batch, interrupted_then_resumed

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(tiny_cfg, tiny_model):
    model, params = tiny_model
    rt = setup_runtime(tiny_cfg.train)
    tx = make_optimizer(tiny_cfg.train, 100)
    state = init_state(params, tx, 0, rt)
    step = TrainStep(model.__call__, tx, rt)
    batch = rt.put(fixed_batch(model.config.vocab_size))
    losses = []
    for _ in range(4):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    assert int(state["step"]) == 4 and int(m["tokens"]) == int((batch["labels"] != IGNORE).sum())


def test_masked_loss_ignores_padding(tiny_model):
    model, params = tiny_model
    b = fixed_batch(model.config.vocab_size)
    base, (count, mean) = loss_fn(params, b, None, model.__call__, train=False)
    assert float(mean) == float(base)
    # Change what sits in padded and unlabelled positions: the loss must not move.
    b2 = dict(b)
    ids = b["input_ids"].copy()
    ids[b["attention_mask"] == 0] = 7
    b2["input_ids"] = ids
    same, _ = loss_fn(params, b2, None, model.__call__, train=False)
    np.testing.assert_allclose(float(base), float(same), rtol=1e-6)
    assert int(count) == int((b["labels"] != IGNORE).sum())
    # ...while changing a labelled position's label does move it.
    b3 = dict(b)
    lab = b["labels"].copy()
    lab[0, 1] = (lab[0, 1] + 1) % 9
    b3["labels"] = lab
    other, _ = loss_fn(params, b3, None, model.__call__, train=False)
    assert abs(float(other) - float(base)) > 1e-6


def test_dataset_loss_norm_weighs_every_token_the_same(tiny_model, tiny_cfg):
    """loss_norm=dataset divides the batch's summed loss by one constant (mean labelled tokens per batch), so
    a batch with twice the labelled tokens pulls twice as hard, and its logged loss stays the per-token mean."""
    model, params = tiny_model
    b = fixed_batch(model.config.vocab_size)
    mean, (count, _) = loss_fn(params, b, None, model.__call__, train=False)
    scaled, (count2, logged) = loss_fn(params, b, None, model.__call__, train=False, denom=5.0)
    np.testing.assert_allclose(float(scaled), float(mean) * int(count) / 5.0, rtol=1e-5)
    np.testing.assert_allclose(float(logged), float(mean), rtol=1e-6)
    enc = Encoded(input_ids=[np.arange(4)] * 3, labels=[np.array([IGNORE, 1, 0, IGNORE]),
                                                        np.array([IGNORE, 2, IGNORE, IGNORE]),
                                                        np.array([IGNORE, 0, 0, 0])], word_index=[None] * 3, source=np.arange(3),
                  n_words=np.ones(3, int))
    tc = replace(tiny_cfg, train={"loss_norm": "dataset", "batch_size": 2}).train  # 2 batches of the 3 rows
    assert loss_denominator(tc, enc) == 3.0
    assert loss_denominator(dataclasses.replace(tc, loss_norm="batch"), enc) is None
    auto = dataclasses.replace(tc, loss_norm="auto", batching="grouped")
    assert loss_denominator(auto, enc) == 3.0
    assert loss_denominator(dataclasses.replace(auto, batching="random"), enc) is None  # the seed run's batches and mean


def test_schedule_is_hf_linear(tiny_cfg):
    tc = replace(tiny_cfg, train={"learning_rate": 3e-5, "warmup_steps": 0}).train
    sched = make_schedule(tc, 3512)
    for step in (0, 1, 878, 1756, 3511, 3512, 4000):
        # transformers.get_linear_schedule_with_warmup with 0 warm-up steps
        expected = 3e-5 * max(0.0, (3512 - step) / 3512)
        assert float(sched(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    tc = replace(tiny_cfg, train={"learning_rate": 1e-3, "warmup_steps": 10}).train
    sched = make_schedule(tc, 110)
    assert float(sched(5)) == pytest.approx(5e-4) and float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(60)) == pytest.approx(5e-4)


@pytest.mark.slow
def test_compact_vocab_equals_dense(tiny_cfg, tmp_path):
    a = train(replace(tiny_cfg, train={"epochs": 1, "eval_test": False}), tmp_path / "compact")
    b = train(replace(tiny_cfg, train={"epochs": 1, "eval_test": False, "compact_vocab": False}), tmp_path / "dense")
    from flaxner.models.loading import load_trained

    pa = load_trained(tmp_path / "compact" / "model")[1]
    pb = load_trained(tmp_path / "dense" / "model")[1]
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert a.history[0]["f1"] == b.history[0]["f1"]


def test_run_outputs_and_compile_bound(tiny_run, tiny_cfg):
    run = Path(tiny_run.run_dir)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "README.md", "model/config.json",
                 "model/flax_model.msgpack", "model/tokenizer.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and [r["step"] for r in evals] == [6, 12]
    assert any(r["type"] == "test" for r in rows)
    assert set(tiny_run.compiled_train_shapes) <= set(tiny_cfg.data.buckets)
    # one train and one eval program per bucket at most, plus a few small ones (init, RNG)
    assert tiny_run.xla_compiles <= 2 * len(tiny_cfg.data.buckets) + 12
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(tiny_run.to_json()))
    card = (run / "README.md").read_text()
    assert "| Training Loss | Epoch | Step | Validation Loss | Precision | Recall | F1 | Accuracy |" in card
    assert "learning_rate: 0.001" in card and "seed: 42" in card


def test_interrupted_then_resumed_equals_uninterrupted(tiny_cfg, tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    # the resumed run compiles its remaining shapes ahead, from the batch where it stopped
    summary = interrupted_then_resumed(tiny_cfg, out, monkeypatch, compile_workers=2)
    assert summary.steps == tiny_run.steps == 12 and summary.compile_workers == 2
    assert_same_run(summary, tiny_run, out)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == sorted(set(steps)), "resumed metrics.jsonl repeats steps"


TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, jax
    sys.path.insert(0, {tests!r})
    from helpers import fixed_batch
    from flaxner.config import load_config
    from flaxner.models.loading import make_model
    from flaxner.runtime import setup_runtime
    from flaxner.training.step import TrainStep, init_state, make_optimizer
    cfg = load_config({cfg!r}, ["train.compilation_cache="])
    rt = setup_runtime(cfg.train)
    model, params = make_model(cfg.model, seed=0, vocab_size=1000)
    tx = make_optimizer(cfg.train, 50)
    state = init_state(params, tx, 0, rt)
    step = TrainStep(model.__call__, tx, rt)
    losses = []
    for i in range(3):
        state, m = step(state, rt.put(fixed_batch(1000, seed=i)))
        losses.append(float(m["loss"]))
    leaves = jax.tree_util.tree_leaves(jax.device_get(state["params"]))
    print(json.dumps({{"devices": rt.n_devices, "losses": losses,
                      "sums": [float(np.abs(x).sum()) for x in leaves]}}))
""")


def _run_devices(n: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    code = TWO_DEVICE_SCRIPT.format(tests=str(ROOT / "tests"), cfg=str(ROOT / "configs" / "tiny.yaml"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_devices_match_one():
    one, two = _run_devices(1), _run_devices(2)
    assert one["devices"] == 1 and two["devices"] == 2
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-5)
    # Sums of |param| per leaf; some leaves (biases after 3 steps) are ~1e-6, so an absolute floor too.
    np.testing.assert_allclose(one["sums"], two["sums"], rtol=1e-4, atol=1e-4)
