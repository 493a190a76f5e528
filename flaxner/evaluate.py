"""Predict over fixed-shape batches, keep labelled positions only, and score with seqeval."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from flaxner.batching import iter_batches
from flaxner.data import Encoded
from flaxner.distributed import fetch
from flaxner.labels import IGNORE


def eval_step(params, batch: dict, apply_fn: Callable) -> dict:
    """Forward without dropout: argmax predictions and the summed loss over labelled tokens."""
    logits = apply_fn(batch["input_ids"], batch["attention_mask"], params=params, train=False).logits
    logits = logits.astype(jnp.float32)  # [batch, seq, num_labels]
    labels = batch["labels"]
    mask = labels != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, labels, 0))
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32), "loss_sum": jnp.sum(ce * mask),
            "count": jnp.sum(mask)}


def predict(step_fn: Callable, params, enc: Encoded, batch_size: int, buckets: Sequence[int],
            put: Callable = lambda b: b, pad_id: int = 0) -> tuple[list[np.ndarray], float]:
    """Predicted label id of every word of every sentence (input order; the first sub-token's prediction, 0 for a
    word with no sub-token), and the mean loss per labelled token. Rows are sorted by length into bucketed
    batches; the last partial batch is padded and masked."""
    words: list[np.ndarray] = [np.zeros(int(n), np.int32) for n in enc.n_words]
    loss_sum, count = 0.0, 0
    pending = [(idx, step_fn(params, put(batch)))
               for idx, batch in iter_batches(enc, batch_size, buckets, shuffle=False, pad_id=pad_id)]
    for idx, out in pending:
        out = fetch(out)  # rows held by other hosts' devices too
        pred = out["pred"]
        loss_sum += float(out["loss_sum"])
        count += int(out["count"])
        for r, i in enumerate(idx):
            w = enc.word_index[i]
            keep = w >= 0
            words[enc.source[i]][w[keep]] = pred[r, :len(w)][keep]
    return words, loss_sum / max(count, 1)


def compute_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """seqeval micro precision/recall/F1 (default mode, as the HF card), token accuracy, and per-type scores."""
    report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}
    return {
        "precision": float(precision_score(true_tags, pred_tags, zero_division=0)),
        "recall": float(recall_score(true_tags, pred_tags, zero_division=0)),
        "f1": float(f1_score(true_tags, pred_tags, zero_division=0)),
        "accuracy": float(accuracy_score(true_tags, pred_tags)),
        "per_type": per_type,
    }


def evaluate(step_fn: Callable, params, enc: Encoded, true_tags: list[list[str]], labels: Sequence[str],
             batch_size: int, buckets: Sequence[int], put: Callable = lambda b: b,
             pad_id: int = 0) -> tuple[dict, list[list[str]]]:
    """Scores of `params` on an encoded split against its word-level gold tags; also the predicted tags."""
    preds, loss = predict(step_fn, params, enc, batch_size, buckets, put, pad_id)
    pred_tags = [[labels[int(p)] for p in row] for row in preds]
    metrics = compute_metrics(true_tags, pred_tags)
    metrics["loss"] = loss
    return metrics, pred_tags


def jit_eval_step(apply_fn: Callable) -> Callable:
    """The evaluation forward, compiled once per batch shape."""
    return jax.jit(lambda params, batch: eval_step(params, batch, apply_fn))

