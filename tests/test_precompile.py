"""Background compilation: what it compiles is what the run then calls, in the run's order, never twice."""

from __future__ import annotations

import pytest
import threading

import jax
import jax.numpy as jnp
import numpy as np

from flaxner.config import replace
from flaxner.data.batching import eval_lengths, iter_batches
from flaxner.precompile import Precompiler, auto_workers
from flaxner.runtime import compile_stats
from flaxner.training.train import train
from flaxner.training.evaluate import EVAL_STEP_NAME
from flaxner.training.step import GRAD_STEP_NAME, UPDATE_STEP_NAME


def test_jit_call_reuses_the_background_compile():
    f = jax.jit(lambda x, y: (x * y).sum(-1))
    spec = jax.ShapeDtypeStruct((3, 40), jnp.float32)
    with Precompiler(2) as pre:
        pre.submit("a", f, spec, spec)
        pre.claim("a")  # waits for it
    assert pre.done == ["a"]
    before = compile_stats()["count"]
    x = np.ones((3, 40), np.float32)
    np.testing.assert_allclose(np.asarray(f(x, x)), np.full(3, 40.0))
    assert compile_stats()["count"] == before
    f(np.ones((3, 41), np.float32), np.ones((3, 41), np.float32))  # a shape nobody compiled ahead: compiles now
    assert compile_stats()["count"] == before + 1


class _Gate:
    """A stand-in for a jitted function whose compile blocks until released."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.compiled = []

    def lower(self, name):
        gate = self

        class Lowered:
            def compile(self):
                gate.started.set()
                assert gate.release.wait(10)
                gate.compiled.append(name)

        return Lowered()


def test_claim_cancels_queued_compiles_and_waits_for_running_ones():
    gate = _Gate()
    pre = Precompiler(1)
    pre.submit("first", gate, "first")
    pre.submit("second", gate, "second")
    pre.submit("first", gate, "first again")  # one compile per key
    assert gate.started.wait(10)
    pre.claim("second")  # queued behind "first": dropped, the caller compiles it itself
    threading.Timer(0.2, gate.release.set).start()
    pre.claim("first")  # under way: waited for
    assert gate.compiled == ["first"] and pre.done == ["first"] and pre.waited_s > 0.1
    pre.close()
    assert gate.compiled == ["first"]


def test_zero_workers_compile_nothing():
    gate = _Gate()
    with Precompiler(0) as pre:
        pre.submit("a", gate, "a")
        pre.claim("a")
    assert not gate.started.is_set() and pre.done == []


def test_auto_workers():
    assert auto_workers("cpu", 2) == 0 and auto_workers("cpu", 64) == 0
    assert auto_workers("gpu", 16) == 8 and auto_workers("gpu", 2) == 1 and auto_workers("tpu", 224) == 8


def test_eval_lengths_are_the_evaluation_batches(tiny_cfg, tiny_tokenizer):
    from flaxner.data.splits import encode, load_split

    enc = encode(load_split(tiny_cfg.data, "validation"), tiny_tokenizer, tiny_cfg.data)
    buckets, bs = (8, 12, 16, 24, 32, 64, 512), 4
    used = {batch["input_ids"].shape[1] for _, batch in iter_batches(enc, bs, buckets, shuffle=False)}
    assert eval_lengths(enc.lengths, bs, buckets) == sorted(used) and len(used) > 1


@pytest.mark.slow
@pytest.mark.parametrize("pack_length", [0, 32])
def test_training_with_compile_threads_compiles_once_and_equals_without(tiny_cfg, tmp_path, pack_length):
    # A batch size and learning rate no other test uses, so that JAX's in-process caches hold none of these
    # programs yet and every one is really compiled (and counted) here; packed rows compile their own shapes.
    cfg = replace(tiny_cfg, data={"pack_length": pack_length},
                  train={"epochs": 1, "compilation_cache": "", "batch_size": 6, "eval_batch_size": 6,
                         "learning_rate": 9.87e-4})
    counts: dict[str, int] = {}
    counting = [True]

    def listen(event: str, duration: float, **kw) -> None:
        if counting[0] and event == "/jax/core/compile/backend_compile_duration":
            counts[str(kw.get("fun_name"))] = counts.get(str(kw.get("fun_name")), 0) + 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        ahead = train(replace(cfg, train={"compile_workers": 2}), tmp_path / "ahead")
    finally:
        counting[0] = False
    assert ahead.compile_workers == 2 and ahead.compiled_ahead >= 2  # the update and at least one shape
    assert counts[f"jit({GRAD_STEP_NAME})"] == len(ahead.compiled_train_shapes)
    assert counts[f"jit({UPDATE_STEP_NAME})"] == 1
    assert 1 <= counts[f"jit({EVAL_STEP_NAME})"] <= len(ahead.buckets)  # evaluation: one program per length used
    inline = train(replace(cfg, train={"compile_workers": 0}), tmp_path / "inline")
    assert inline.compile_workers == 0 and inline.compiled_ahead == 0
    assert ahead.history == inline.history and ahead.test["f1"] == inline.test["f1"]
