"""The notebook's numbers: span confusion, worst sentences, HTML highlights, dataset and padding statistics."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from flaxner.data import display
from flaxner.training import analysis, evaluate
from flaxner.training.analysis import MISSED, SPURIOUS
from flaxner.config import DataConfig, ModelConfig
from flaxner.data.batching import padding_stats
from flaxner.data.splits import Encoded
from flaxner.training.evaluate import compute_metrics
from flaxner.data.labels import CONLL_LABELS

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-bert"
MARK = re.compile(r"<mark[^>]*>(.*?)</mark>", re.S)


def test_confusion_counts_types_missed_and_spurious():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"], ["B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "O", "B-MISC", "O"], ["I-PER", "I-PER"]]
    conf = analysis.confusion_matrix(gold, pred)
    assert conf.types == ["LOC", "MISC", "ORG", "PER"]
    assert conf.rows[-1] == SPURIOUS and conf.cols[-1] == MISSED
    expected = {("PER", "PER"): 2,  # the stray I-PER starts a span, as seqeval reads it
                ("LOC", "ORG"): 1,  # same boundaries, wrong type
                ("ORG", MISSED): 1,
                ("MISC", MISSED): 1, (SPURIOUS, "MISC"): 1}  # a wrong boundary is one missed plus one spurious
    for (g, p), n in expected.items():
        assert conf.count(g, p) == n, (g, p)
    assert conf.counts.sum() == sum(expected.values())


def test_confusion_agrees_with_seqeval():
    rng = np.random.default_rng(0)
    gold = [[CONLL_LABELS[i] for i in rng.integers(0, 9, rng.integers(1, 15))] for _ in range(200)]
    pred = [[t if rng.random() < 0.6 else CONLL_LABELS[rng.integers(0, 9)] for t in g] for g in gold]
    conf = analysis.confusion_matrix(gold, pred)
    per_type = compute_metrics(gold, pred)["per_type"]
    assert sorted(per_type) == conf.types
    for k, t in enumerate(conf.types):
        tp = conf.counts[k, k]
        assert conf.counts[k].sum() == per_type[t]["support"]  # every gold span lands in its row once
        assert tp == pytest.approx(per_type[t]["recall"] * per_type[t]["support"])
        if conf.counts[:, k].sum():
            assert tp / conf.counts[:, k].sum() == pytest.approx(per_type[t]["precision"])
    assert conf.counts[-1, -1] == 0


def test_confusion_keeps_given_types():
    conf = analysis.confusion_matrix([["O"]], [["O"]], types=["PER", "ORG"])
    assert conf.rows == ["PER", "ORG", SPURIOUS] and conf.counts.shape == (3, 3) and not conf.counts.any()


def test_worst_sentences_order_and_spans():
    tokens = [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]
    gold = [["B-PER", "O"], ["B-LOC", "B-ORG"], ["B-PER", "I-PER"], ["O", "O"]]
    pred = [["B-PER", "O"], ["O", "O"], ["B-ORG", "B-LOC"], ["B-MISC", "O"]]
    worst = analysis.worst_sentences(tokens, gold, pred, n=10)
    # sentence 2: PER missed + ORG and LOC spurious = 3; sentence 1: 2 missed; 3: 1 spurious; 0 is right
    assert [(w["index"], w["errors"]) for w in worst] == [(2, 3), (1, 2), (3, 1)]
    assert worst[0]["gold"] == [("PER", "e f")] and worst[0]["pred"] == [("ORG", "e"), ("LOC", "f")]
    assert [w["index"] for w in analysis.worst_sentences(tokens, gold, pred, n=2)] == [2, 1]
    table = display.worst_html(worst)
    assert table.count("<tr>") == 4 and MARK.findall(table)[:1] == ["e f"]


def test_worst_sentences_ties_in_corpus_order():
    gold = [["B-PER"], ["B-LOC"], ["B-ORG"]]
    pred = [["O"], ["O"], ["O"]]
    assert [w["index"] for w in analysis.worst_sentences([["x"]] * 3, gold, pred)] == [0, 1, 2]


def test_highlight_escapes_and_covers_exact_offsets():
    text = 'Tom <b>&amp; "AT&T <Inc>" in\tZürich 😀 é\n<script>'
    ents = [{"start": text.index("AT&T"), "end": text.index("AT&T") + len("AT&T <Inc>"), "label": "ORG"},
            {"start": 0, "end": 3, "label": "PER", "score": 0.98765},
            {"start": text.index("Zürich"), "end": text.index("Zürich") + 6, "label": "LOC"}]
    out = display.highlight_html(text, ents)
    assert "<script>" not in out and "<b>" not in out and "&lt;script&gt;" in out
    marked = [html.unescape(m) for m in MARK.findall(out)]
    assert marked == [text[e["start"]:e["end"]] for e in sorted(ents, key=lambda e: e["start"])]
    assert 'title="PER 0.988"' in out
    plain = re.sub(r"<sup[^>]*>.*?</sup>", "", out)
    assert html.unescape(re.sub(r"<[^>]+>", "", plain)) == text  # nothing dropped, nothing added
    assert display.highlight_html(text, {"entities": ents}) == out  # a Tagger-style record works too


def test_highlight_colours_per_label_and_rejects_bad_spans():
    text = "Anna met Bob in Oslo"
    ents = [{"start": 0, "end": 4, "label": "PER"}, {"start": 9, "end": 12, "label": "PER"},
            {"start": 16, "end": 20, "label": "LOC"}]
    out = display.highlight_html(text, ents)
    colours = re.findall(r"<mark style=\"background:(#[0-9a-f]+)", out)
    assert colours[0] == colours[1] != colours[2]
    for bad in ([{"start": 0, "end": 4, "label": "PER"}, {"start": 2, "end": 6, "label": "PER"}],
                [{"start": 18, "end": 25, "label": "LOC"}], [{"start": 3, "end": 3, "label": "LOC"}]):
        with pytest.raises(ValueError):
            display.highlight_html(text, bad)
    assert len(set(display.label_colors(["A", "B", "PER"]).values())) == 3


def test_tagged_html_one_block_per_text():
    texts = ["Anna <3 Oslo", "nothing here"]
    out = display.tagged_html(texts, [[{"start": 0, "end": 4, "label": "PER", "text": "Anna"}], []])
    assert out.count("<hr>") == 1 and "&lt;3" in out and "nothing here" in out


def test_words_to_text_offsets():
    tokens = ["Peter", "Blackburn", "visits", "São", "Paulo", "."]
    text, ents = display.words_to_text(tokens, ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"])
    assert text == " ".join(tokens)
    assert [(e["label"], text[e["start"]:e["end"]], e["text"]) for e in ents] == [
        ("PER", "Peter Blackburn", "Peter Blackburn"), ("LOC", "São Paulo", "São Paulo")]


def test_dataset_stats_on_shipped_data():
    stats = analysis.dataset_stats(DataConfig(limit=1), ["train"])
    # "EU rejects German call to boycott British lamb ." : ORG EU, MISC German, MISC British
    assert stats["train"] == {"sentences": 1, "tokens": 9, "entities": 3, "per_type": {"MISC": 2, "ORG": 1}}
    stats = analysis.dataset_stats(DataConfig(limit=50))
    assert list(stats) == ["train", "validation", "test"]
    for s in stats.values():
        assert s["sentences"] == 50 and s["entities"] == sum(s["per_type"].values()) > 0
        assert set(s["per_type"]) <= {"PER", "ORG", "LOC", "MISC"}
    rows = analysis.stats_table(stats)
    assert [r["split"] for r in rows] == list(stats) and all("PER" in r for r in rows)


def test_dataset_stats_on_labels_that_are_not_conlls(tmp_path):
    (tmp_path / "train.txt").write_text("Paris B-PLACE\nin O\n1996 B-NUM\n\nNew B-PLACE\nYork I-PLACE\n")
    (tmp_path / "valid.txt").write_text("Rome B-PLACE\n\n")
    stats = analysis.dataset_stats(DataConfig(source=str(tmp_path)), ["train", "validation"])
    assert stats["train"] == {"sentences": 2, "tokens": 5, "entities": 3, "per_type": {"NUM": 1, "PLACE": 2}}
    assert stats["validation"]["per_type"] == {"PLACE": 1}
    assert list(analysis.dataset_stats(DataConfig(source=str(tmp_path)))) == ["train", "validation"]  # no test split


def _encoded(lengths) -> Encoded:
    ids = [np.zeros(n, np.int32) for n in lengths]
    return Encoded(ids, ids, ids, np.arange(len(ids)), np.asarray(lengths))


@pytest.mark.parametrize("mode", ["grouped", "random"])
def test_bucket_costs_add_up_to_padding_stats(mode):
    lengths = np.random.default_rng(1).integers(3, 120, 333)
    buckets = (16, 32, 64, 128)
    costs = analysis.bucket_costs(lengths, 8, buckets, seed=3, mode=mode)
    ref = padding_stats(_encoded(lengths), 8, buckets, seed=3, mode=mode)
    assert sum(c["real_tokens"] for c in costs) == ref["real_tokens"] == lengths.sum()
    assert sum(c["padded_tokens"] for c in costs) == ref["padded_tokens"]
    assert [c["bucket"] for c in costs] == ref["shapes"]
    assert sum(c["rows"] for c in costs) == len(lengths)
    for c in costs:
        assert c["padded_tokens"] == c["batches"] * 8 * c["bucket"] and 0 <= c["padding"] < 1


def test_epoch_curves_from_metrics_rows():
    rows = [{"type": "eval", "epoch": 2, "step": 8, "train_loss": 0.5, "loss": 0.6, "f1": 0.7, "per_type": {}},
            {"type": "train", "step": 2, "epoch": 0.5, "loss": 1.5, "learning_rate": 1e-3},
            {"type": "eval", "epoch": 1, "step": 4, "train_loss": 1.0, "loss": 0.9, "f1": 0.4, "per_type": {}},
            {"type": "test", "step": 8, "f1": 0.6}]
    curves = analysis.epoch_curves(rows)
    assert [r["epoch"] for r in curves["eval"]] == [1, 2] and "per_type" not in curves["eval"][0]
    assert curves["train"] == [{"step": 2, "epoch": 0.5, "loss": 1.5, "learning_rate": 1e-3}]


def test_explore_config_prefers_the_run(tmp_path):
    from flaxner.config import load_config, save_config

    cfg = analysis.explore_config(None, "configs/tiny.yaml", ["train.epochs=1"])
    assert cfg.name == "tiny" and cfg.train.epochs == 1
    save_config(load_config("configs/tiny.yaml", ["name=saved"]), tmp_path / "config.yaml")
    assert analysis.explore_config(tmp_path, "configs/quickstart.yaml").name == "saved"


def test_make_long_text_exceeds_the_limit():
    from flaxner.models.loading import make_tokenizer

    tok = make_tokenizer(ModelConfig(name=str(FIXTURE)))
    text = analysis.make_long_text(tok, "The European Commission said on Thursday .", "Peter went to Paris .", 512)
    assert text.endswith("Peter went to Paris .") and analysis.subtoken_count(tok, text) > 512


def test_predict_split_matches_evaluate(tmp_path):
    from transformers import AutoTokenizer

    from flaxner.models.loading import make_model

    model, params = make_model(ModelConfig(name=str(FIXTURE), random_init=True), CONLL_LABELS, seed=0,
                               vocab_size=1000)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 8  # confident, varied predictions
    model.save_pretrained(tmp_path, params=params)
    AutoTokenizer.from_pretrained(str(FIXTURE)).save_pretrained(tmp_path)
    data = DataConfig(limit=12, buckets=(64, 512))
    pred = evaluate.predict_split(tmp_path, "validation", data=data, batch_size=8)
    assert len(pred.tokens) == len(pred.gold) == len(pred.pred) == 12
    assert [len(t) for t in pred.tokens] == [len(g) for g in pred.gold] == [len(p) for p in pred.pred]
    assert pred.metrics["f1"] == compute_metrics(pred.gold, pred.pred)["f1"]
    assert len({t for p in pred.pred for t in p}) > 1  # a real forward, not a constant
    # The same model with its label columns in another order: same tags, same loss (gold ids follow the model's).
    perm = np.arange(len(CONLL_LABELS))[::-1]
    clf = params["classifier"]
    permuted = {**params, "classifier": {"kernel": clf["kernel"][:, perm], "bias": clf["bias"][perm]}}
    again = evaluate.predict_split((model, permuted, AutoTokenizer.from_pretrained(str(FIXTURE)),
                                    [CONLL_LABELS[i] for i in perm]), "validation", data=data, batch_size=8)
    assert again.pred == pred.pred and again.gold == pred.gold
    assert again.metrics["loss"] == pytest.approx(pred.metrics["loss"], rel=1e-5)


def test_plots_return_figures():
    from matplotlib.figure import Figure

    from flaxner.training import plots

    stats = {"train": {"sentences": 2, "tokens": 9, "entities": 3, "per_type": {"PER": 1, "ORG": 2}},
             "test": {"sentences": 1, "tokens": 4, "entities": 1, "per_type": {"LOC": 1}}}
    costs = analysis.bucket_costs(np.array([5, 20, 30, 70]), 2, (16, 32, 64, 128))
    curves = {"train": [{"step": 1, "epoch": 0.5, "loss": 2.0}],
              "eval": [{"epoch": 1, "train_loss": 1.0, "loss": 1.2, "f1": 0.3, "precision": 0.4, "recall": 0.2}]}
    per_type = {"PER": {"precision": 0.5, "recall": 0.25, "f1": 0.33, "support": 4}}
    conf = analysis.confusion_matrix([["B-PER", "O"]], [["B-LOC", "B-PER"]])
    figs = [plots.plot_split_stats(stats), plots.plot_length_histogram(np.array([5, 20, 30, 70]), (16, 32, 64, 128),
                                                                       costs),
            plots.plot_training(curves), plots.plot_per_type(per_type), plots.plot_confusion(conf)]
    assert all(isinstance(f, Figure) and f.axes for f in figs)
    texts = [t.get_text() for t in figs[-1].axes[0].texts]
    assert texts.count("1") == 2  # PER->LOC and spurious PER
