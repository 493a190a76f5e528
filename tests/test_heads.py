"""The output head against a numpy reference written from the definitions (float64, log-sum-exp)."""

import jax.numpy as jnp
import numpy as np
import pytest

from flaxner.models.heads import loss_sum, predict_ids, tag_scores, token_loss
from flaxner.data.labels import IGNORE


def _batch(seed: int = 0, rows: int = 3, seq: int = 7, labels: int = 5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (rows, seq, labels)).astype(np.float32)
    gold = rng.integers(0, labels, (rows, seq)).astype(np.int32)
    gold[rng.random((rows, seq)) < 0.4] = IGNORE  # padding, specials, later sub-tokens
    gold[0, 0] = 1  # at least one labelled token
    return logits, gold


def _ref_ce(logits: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-log softmax(logits)[gold] per token, 0 where unlabelled; and the labelled mask."""
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
    mask = gold != IGNORE
    picked = np.take_along_axis(x, np.where(mask, gold, 0)[..., None], -1)[..., 0]
    return np.where(mask, log_z - picked, 0.0), mask


def _ref_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("denom", [None, 2.5])
def test_token_loss_is_the_masked_mean_or_the_sum_over_denom(denom):
    logits, gold = _batch()
    ce, mask = _ref_ce(logits, gold)
    loss, (count, mean) = token_loss(jnp.asarray(logits), jnp.asarray(gold), denom)
    assert int(count) == mask.sum()
    np.testing.assert_allclose(float(mean), ce.sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce.sum() / (mask.sum() if denom is None else denom), rtol=1e-5)


def test_no_labelled_token_is_a_zero_loss_not_nan():
    logits, gold = _batch()
    loss, (count, mean) = token_loss(jnp.asarray(logits), jnp.full_like(jnp.asarray(gold), IGNORE))
    assert (int(count), float(loss), float(mean)) == (0, 0.0, 0.0)


def test_loss_sum_adds_labelled_tokens_only():
    logits, gold = _batch(1)
    ce, mask = _ref_ce(logits, gold)
    total, count = loss_sum(jnp.asarray(logits), jnp.asarray(gold))
    assert int(count) == mask.sum()
    np.testing.assert_allclose(float(total), ce.sum(), rtol=1e-5)


def test_predict_ids_is_the_argmax():
    logits, _ = _batch(2)
    ids = predict_ids(jnp.asarray(logits))
    assert ids.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(ids), logits.argmax(-1))


def test_tag_scores_first_and_the_probabilities_for_aggregation():
    logits, _ = _batch(3)
    probs = _ref_softmax(logits)
    ids, score = tag_scores(jnp.asarray(logits), "first")
    assert ids.dtype == jnp.int32 and score.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ids), probs.argmax(-1))
    np.testing.assert_allclose(np.asarray(score), probs.max(-1), rtol=1e-5)
    for aggregation in ("average", "max"):
        out = tag_scores(jnp.asarray(logits), aggregation)
        assert out.dtype == jnp.float32 and out.shape == logits.shape
        np.testing.assert_allclose(np.asarray(out), probs, rtol=1e-5, atol=1e-7)


def test_low_precision_logits_are_scored_in_float32():
    logits, gold = _batch(4)
    low = jnp.asarray(logits, jnp.bfloat16)
    exact = np.asarray(low.astype(jnp.float32))  # what the head sees once cast
    ce, mask = _ref_ce(exact, gold)
    total, _ = loss_sum(low, jnp.asarray(gold))
    assert total.dtype == jnp.float32
    np.testing.assert_allclose(float(total), ce.sum(), rtol=1e-5)
    ids, score = tag_scores(low, "first")
    assert score.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(score), _ref_softmax(exact).max(-1), rtol=1e-5)
