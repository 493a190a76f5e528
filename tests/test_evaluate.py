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


def test_context_views_label_each_word_by_its_mean_probabilities(tiny_model, tiny_tokenizer, snippet):
    import jax

    from flaxner.data.batching import view_rows
    from flaxner.training.evaluate import predict

    model, params = tiny_model
    ds = load_split(DataConfig(source=str(snippet.parent), train_split="snippet", limit=16), "snippet")
    data = DataConfig(max_length=64, context="neighbours", context_size=8)
    enc = encode(ds, tiny_tokenizer, data)
    buckets = (16, 32, 64)

    probs = jax.jit(lambda ids, mask: jax.nn.softmax(model(ids, mask, params=params, train=False).logits))

    def by_hand(view):  # each row alone in a row of 64: the probabilities of every word's first sub-token
        rows = view_rows(enc, view)
        out = [np.zeros((n, len(CONLL_LABELS)), np.float32) for n in enc.n_words]
        for i, x in enumerate(rows.input_ids):
            ids, mask = np.zeros((1, 64), np.int32), np.zeros((1, 64), np.int32)
            ids[0, :len(x)], mask[0, :len(x)] = x, 1
            w = rows.word_index[i]
            out[rows.source[i]][w[w >= 0]] = np.asarray(probs(ids, mask))[0, :len(x)][w >= 0]
        return out

    full, none = by_hand("full"), by_hand("none")
    assert any((f.argmax(-1) != n.argmax(-1)).any() for f, n in zip(full, none))  # the views disagree somewhere
    got, _ = predict(jit_eval_step(model.__call__, probs=True), params, enc, 4, buckets, views=("full", "none"))
    for g, f, n in zip(got, full, none, strict=True):
        mean = (f + n) / 2
        top = np.sort(mean, -1)
        clear = top[:, -1] - top[:, -2] > 1e-4  # padding moves the probabilities by float rounding only
        assert (g[clear] == mean.argmax(-1)[clear]).all()
    # one view reads as the rows of that framing: `none` is context none's rows
    step = jit_eval_step(model.__call__)
    alone, _ = predict(step, params, encode(ds, tiny_tokenizer, DataConfig(max_length=64)), 4, buckets)
    single, _ = predict(step, params, enc, 4, buckets, views=("none",))
    assert all((a == b).all() for a, b in zip(alone, single, strict=True))
