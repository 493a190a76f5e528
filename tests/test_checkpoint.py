import jax
import numpy as np
import pytest

from flaxner.training.checkpoint import Checkpointer
from flaxner.runtime import abstract, setup_runtime
from flaxner.training.step import init_state, make_optimizer


def test_save_restore_roundtrip(tiny_cfg, tiny_model, tmp_path):
    model, params = tiny_model
    rt = setup_runtime(tiny_cfg.train)
    tx = make_optimizer(tiny_cfg.train, 10)
    state = init_state(params, tx, 7, rt)
    state = {**state, "step": state["step"] + 5}
    meta = {"epoch": 1, "batch": 3, "best_f1": 0.5, "history": [{"epoch": 1, "f1": 0.5}], "labels": ["O", "B-PER"]}
    ck = Checkpointer(tmp_path, keep=2)
    ck.save(5, state, meta, best=True)
    for step in (6, 7):
        ck.save(step, state, {**meta, "best_f1": 0.4})
    assert ck.latest_step() == 7
    assert sorted(ck.last.all_steps()) == [6, 7]  # only the last two are kept...
    restored, rmeta = ck.restore(abstract(state), step=7)
    best, bmeta = ck.restore(abstract(state), which="best")  # ...and the best
    ck.close()
    assert rmeta == {**meta, "best_f1": 0.4} and bmeta["best_f1"] == 0.5
    assert int(restored["step"]) == 5 and int(best["step"]) == 5
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_without_checkpoint_is_clear(tmp_path, tiny_cfg, tiny_model):
    ck = Checkpointer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.restore({"x": np.zeros(2)})
    ck.close()
