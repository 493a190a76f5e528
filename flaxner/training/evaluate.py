"""Predict over fixed-shape batches, keep labelled positions only, and score as seqeval does."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import numpy as np

from flaxner.data.batching import eval_batches, iter_batches, view_rows
from flaxner.data.packing import collate_packed
from flaxner.data.labels import spans_from_tags
from flaxner.config import Config, DataConfig, TrainConfig, check_fields, load_config, validate
from flaxner.data.splits import Encoded
from flaxner.models.heads import loss_sum, predict_ids
from flaxner.models.masks import batch_logits, pack_length_for
from flaxner.training.distributed import fetch


def eval_step(params, batch: dict, apply_fn: Callable, probs: bool = False) -> dict:
    """Forward without dropout: the head's predictions and summed loss over labelled tokens (with `probs`, also
    the label probabilities, which context views average)."""
    logits = batch_logits(apply_fn, batch, params=params, train=False)
    total, count = loss_sum(logits, batch["labels"])  # logits: [batch, seq, num_labels]
    out = {"pred": predict_ids(logits), "loss_sum": total, "count": count}
    if probs:
        out["probs"] = jax.nn.softmax(logits.astype(jax.numpy.float32), axis=-1)
    return out


def predict(step_fn: Callable, params, enc: Encoded, batch_size: int, buckets: Sequence[int],
            put: Callable = lambda b: b, pad_id: int = 0, pack_length: int = 0,
            views: Sequence[str] = ("full",)) -> tuple[list[np.ndarray], float]:
    """Predicted label id of every word of every sentence (input order; the first sub-token's prediction, 0 for a
    word with no sub-token), and the mean loss per labelled token. Rows are sorted by length into bucketed
    batches (`eval_batches`; with `pack_length`, rows that fit share packed rows); a batch's missing rows are
    padded and masked. With several context `views` (`data.context_views`; `step_fn` from
    `jit_eval_step(probs=True)`), every row is read once per view, and a word's label is the argmax of its mean
    probabilities; the loss is the full view's (else the first view's)."""
    views = tuple(views)
    words: list = [np.zeros(int(n), np.int32) for n in enc.n_words]
    if len(views) == 1:
        loss = _predict_view(step_fn, params, view_rows(enc, views[0]), batch_size, buckets, put, pad_id,
                             pack_length, "pred", words)
        return words, loss
    losses = {}
    for view in views:  # one view's batches at a time: the host holds one sum of probabilities
        losses[view] = _predict_view(step_fn, params, view_rows(enc, view), batch_size, buckets, put, pad_id,
                                     pack_length, "probs", words)
    return [w.argmax(-1).astype(np.int32) if w.ndim == 2 else w for w in words], losses.get("full", losses[views[0]])


def _predict_view(step_fn, params, enc: Encoded, batch_size, buckets, put, pad_id, pack_length, key: str,
                  out: list[np.ndarray]) -> float:
    """Run the rows of `enc` and write (`pred`: label ids) or add (`probs`: probabilities; an `out` entry of label
    ids becomes their sum) each sentence's words' first sub-token outputs into `out`; the mean loss per labelled
    token."""
    loss_sum, count = 0.0, 0
    # each batch with the sentences of each of its rows, in the order they sit in the row
    if pack_length:
        batches = [(collate_packed(enc, slots, batch_size, n, pad_id), slots)
                   for n, slots in eval_batches(enc.lengths, batch_size, buckets, pack_length)]
    else:
        batches = [(batch, [[i] for i in idx])
                   for idx, batch in iter_batches(enc, batch_size, buckets, shuffle=False, pad_id=pad_id)]
    pending = [(slots, step_fn(params, put(batch))) for batch, slots in batches]
    for slots, res in pending:
        res = fetch(res)  # rows held by other hosts' devices too
        pred = res[key]
        loss_sum += float(res["loss_sum"])
        count += int(res["count"])
        for r, members in enumerate(slots):
            at = 0
            for i in members:
                w = enc.word_index[i]
                keep = w >= 0
                got = pred[r, at:at + len(w)][keep]
                if key == "pred":
                    out[enc.source[i]][w[keep]] = got
                else:
                    dest = out[enc.source[i]]
                    if dest.ndim == 1:
                        dest = out[enc.source[i]] = np.zeros((len(dest), got.shape[-1]), np.float32)
                    dest[w[keep]] += got
                at += len(enc.input_ids[i])
    return loss_sum / max(count, 1)


def _prf(correct: int, pred: int, true: int) -> tuple[float, float, float]:
    """Precision, recall and F1 as seqeval computes them (0 where undefined: its zero_division=0)."""
    p = correct / pred if pred else 0.0
    r = correct / true if true else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def compute_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """seqeval's scores (default mode, as the HF card; tests/test_evaluate.py checks them against seqeval):
    entity-level micro precision/recall/F1, token accuracy, and per-type scores for every type in gold or
    predictions. Computed here, so the core install needs no seqeval (and no scikit-learn under it)."""
    correct: Counter = Counter()
    n_pred: Counter = Counter()
    n_true: Counter = Counter()
    tokens = right = 0
    for t, p in zip(true_tags, pred_tags, strict=True):
        gold, pred = set(spans_from_tags(t)), set(spans_from_tags(p))
        n_true.update(s[0] for s in gold)
        n_pred.update(s[0] for s in pred)
        correct.update(s[0] for s in gold & pred)
        tokens += len(t)
        right += sum(a == b for a, b in zip(t, p, strict=True))
    per_type = {}
    for typ in sorted(n_true.keys() | n_pred.keys()):
        prec, rec, f1 = _prf(correct[typ], n_pred[typ], n_true[typ])
        per_type[typ] = {"precision": prec, "recall": rec, "f1": f1, "support": n_true[typ]}
    prec, rec, f1 = _prf(sum(correct.values()), sum(n_pred.values()), sum(n_true.values()))
    return {"precision": prec, "recall": rec, "f1": f1, "accuracy": right / tokens if tokens else 0.0,
            "per_type": per_type}


def evaluate(step_fn: Callable, params, enc: Encoded, true_tags: list[list[str]], labels: Sequence[str],
             batch_size: int, buckets: Sequence[int], put: Callable = lambda b: b, pad_id: int = 0,
             pack_length: int = 0, views: Sequence[str] = ("full",)) -> tuple[dict, list[list[str]]]:
    """Scores of `params` on an encoded split against its word-level gold tags; also the predicted tags."""
    preds, loss = predict(step_fn, params, enc, batch_size, buckets, put, pad_id, pack_length, views)
    pred_tags = [[labels[int(p)] for p in row] for row in preds]
    metrics = compute_metrics(true_tags, pred_tags)
    metrics["loss"] = loss
    return metrics, pred_tags


# The name JAX gives the evaluation program (`jit_eval_step`) in its compile logs and monitoring events
# (`fun_name`, e.g. "eval_step" when tracing, "jit(eval_step)" when compiling).
EVAL_STEP_NAME = eval_step.__name__


def jit_eval_step(apply_fn: Callable, probs: bool = False) -> Callable:
    """The evaluation forward `eval_step(params, batch)`, compiled once per batch shape (named EVAL_STEP_NAME);
    `probs`: it also returns the label probabilities (for several context views)."""
    return jax.jit(functools.partial(eval_step, apply_fn=apply_fn, probs=probs))


@dataclass
class SplitPredictions:
    """Word-level gold and predicted tags of a split, with the scores `flaxner.training.evaluate` gives them."""

    split: str
    tokens: list[list[str]]
    gold: list[list[str]]
    pred: list[list[str]]
    metrics: dict


def predict_split(run_dir_or_model: str | Path | tuple, split: str = "validation", limit: int | None = None,
                  data: DataConfig | None = None, batch_size: int | None = None,
                  views: Sequence[str] | None = None) -> SplitPredictions:
    """Load a trained model (a run folder, an HF folder, or the tuple `flaxner.models.loading.load_trained` returns) and
    predict a split of its data: the run's `config.yaml` data section unless `data` is given, `limit`
    sentences (None: the config's limit, 0: all), its `data.context_views` unless `views` are given."""
    from flaxner.data.splits import encode, load_split
    from flaxner.data.labels import check_labels
    from flaxner.models.loading import load_trained
    from flaxner.rundir import RunDir

    if limit is not None:  # arguments that no config file validated, checked before any loading
        check_fields(DataConfig(limit=limit), "data")
    if batch_size is not None:
        check_fields(TrainConfig(eval_batch_size=batch_size), "train")
    saved = None
    if isinstance(run_dir_or_model, tuple):
        model, params, tokenizer, labels = run_dir_or_model
    else:
        model, params, tokenizer, labels = load_trained(run_dir_or_model)
        cfg_path = RunDir(run_dir_or_model).config
        saved = load_config(cfg_path) if cfg_path.is_file() else None
    data = data or (saved.data if saved else DataConfig())
    if limit is not None:
        data = replace(data, limit=limit)
    if views:
        data = replace(data, context_views=tuple(views))
        validate(Config(data=data))
    batch_size = batch_size or (saved.train.eval_batch_size if saved else 16)
    ds = load_split(data, split, labels=labels)  # a tag outside the model's labels: DataError at its file:line
    names = ds.features["ner_tags"].feature.names
    check_labels(labels, names)
    cols = ds[:]
    gold = [[names[t] for t in tags] for tags in cols["ner_tags"]]
    # Label ids as the model numbers them (its order may differ from the data's), so that the loss is right.
    to_model = {lab: i for i, lab in enumerate(labels)}
    enc = encode({"tokens": cols["tokens"], "ner_tags": [[to_model[t] for t in tags] for tags in gold],
                  "document": cols.get("document")}, tokenizer, data, labels)
    metrics, pred = evaluate(jit_eval_step(model.__call__, len(data.context_views) > 1), params, enc, gold, labels,
                             batch_size, data.buckets, pad_id=tokenizer.pad_token_id or 0,
                             pack_length=pack_length_for(model, data.pack_length), views=data.context_views)
    return SplitPredictions(split, [list(t) for t in cols["tokens"]], gold, pred, metrics)
