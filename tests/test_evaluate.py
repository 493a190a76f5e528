import numpy as np
import pytest
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from flaxner.config import DataConfig
from flaxner.data.splits import encode, load_split
from flaxner.training.evaluate import compute_metrics, evaluate, jit_eval_step
from flaxner.data.labels import CONLL_LABELS

CASES = [
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),
    ([["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]], [["B-PER", "O", "O", "B-LOC"], ["I-ORG", "O"]]),
    ([["B-MISC", "I-MISC", "O"], ["O", "B-LOC"]], [["O", "O", "O"], ["B-PER", "B-LOC"]]),
    ([["O", "O"]], [["B-ORG", "I-ORG"]]),
]


@pytest.mark.parametrize("gold, pred", CASES)
def test_metrics_equal_seqeval(gold, pred):
    m = compute_metrics(gold, pred)
    assert m["precision"] == precision_score(gold, pred, zero_division=0)
    assert m["recall"] == recall_score(gold, pred, zero_division=0)
    assert m["f1"] == f1_score(gold, pred, zero_division=0)
    assert m["accuracy"] == accuracy_score(gold, pred)
    rep = classification_report(gold, pred, output_dict=True, zero_division=0)
    for typ, row in m["per_type"].items():
        assert row["f1"] == rep[typ]["f1-score"] and row["support"] == rep[typ]["support"]


def test_metrics_equal_seqeval_on_random_tags():
    """compute_metrics (flaxner's own, so the core install needs no seqeval or scikit-learn) gives seqeval's
    numbers exactly, on random IOB2 gold and predictions with stray I- tags and types only one side has."""
    rng = np.random.default_rng(11)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    for _ in range(200):
        lengths = rng.integers(0, 9, rng.integers(1, 6))
        gold = [[tags[i] for i in rng.integers(0, 5, n)] for n in lengths]
        pred = [[tags[i] for i in rng.integers(0, 7, n)] for n in lengths]
        if not sum(lengths):
            continue
        m = compute_metrics(gold, pred)
        assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (
            precision_score(gold, pred, zero_division=0), recall_score(gold, pred, zero_division=0),
            f1_score(gold, pred, zero_division=0), accuracy_score(gold, pred))
        rep = classification_report(gold, pred, output_dict=True, zero_division=0)
        assert m["per_type"] == {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
                                     "support": v["support"]} for k, v in rep.items() if not k.endswith(" avg")}


def test_hand_case_values():
    m = compute_metrics(*CASES[1])
    # gold spans: PER(0-2), LOC(3), ORG(0); predicted: PER(0-1), LOC(3), ORG(0) -> 2 of 3 right
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_evaluate_scores_every_word_with_a_partial_last_batch(tiny_model, tiny_tokenizer, snippet):
    model, params = tiny_model
    ds = load_split(DataConfig(source=str(snippet.parent), train_split="snippet"), "snippet")
    enc = encode(ds, tiny_tokenizer, DataConfig(max_length=24))  # long sentences split into pieces
    gold = [[CONLL_LABELS[t] for t in tags] for tags in ds[:]["ner_tags"]]
    step = jit_eval_step(model.__call__)
    m, pred = evaluate(step, params, enc, gold, CONLL_LABELS, 4, (16, 32), pad_id=0)
    assert [len(p) for p in pred] == [len(g) for g in gold]
    assert m == {**compute_metrics(gold, pred), "loss": m["loss"]}
    # the same predictions with another batch size (another partial batch)
    m2, pred2 = evaluate(step, params, enc, gold, CONLL_LABELS, 8, (16, 32), pad_id=0)
    assert pred2 == pred and np.isclose(m2["loss"], m["loss"], rtol=1e-5)


def test_the_eval_step_is_compiled_under_its_exported_name(tiny_model, compile_event_names):
    from flaxner.training.evaluate import EVAL_STEP_NAME
    from flaxner.training.step import TRAIN_STEP_NAMES

    model, params = tiny_model
    step = jit_eval_step(model.__call__)
    ids = np.zeros((2, 8), np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    seen = compile_event_names(step, params, batch)
    assert EVAL_STEP_NAME == step.__name__ == "eval_step"
    assert ("jaxpr_trace_duration", EVAL_STEP_NAME) in seen, seen
    assert any(kind == "backend_compile_duration" and EVAL_STEP_NAME in n for kind, n in seen), seen
    assert not any(t in n for t in TRAIN_STEP_NAMES for _, n in seen)
