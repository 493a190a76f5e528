"""Sentence starts without a mark, learnt from training documents (flaxner.data.sentences): fitting, the file a run
keeps, and the tagger's rows that follow it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flaxner.config import DataConfig
from flaxner.data.sentences import FILE, SentenceModel, fit, fit_columns, load_for
from flaxner.data.splits import load_split
from flaxner.data.words import sentence_starts, split_words


def _dateline_docs(n: int) -> list[list[list[str]]]:
    """Documents that open with a dateline sentence with no mark at its end (`CITY 1996-08-30`), as CoNLL-2003's."""
    cities, names = ["LONDON", "ROME", "PARIS", "TOKYO"], ["Smith", "Jones", "Brown", "Ito", "Rossi"]
    return [[[cities[i % 4], f"1996-08-{10 + i % 20}"], [names[i % 5], "said", "on", "Friday", "it", "won", "."],
             ["The", "team", "lost", str(i % 7), "games", "."]] for i in range(n)]


def _sentences(model, text):
    spans = split_words(text)
    starts = model.starts(text, spans) if model else sentence_starts(text, spans)
    return [" ".join(text[a:b] for a, b in spans[s:e]) for s, e in zip(starts, starts[1:] + [len(spans)])]


def test_fit_learns_a_start_the_rules_miss():
    text = "MADRID 1996-12-06 Garcia said on Friday it won . The team lost 3 games ."
    assert _sentences(None, text)[0] == "MADRID 1996-12-06 Garcia said on Friday it won ."  # the rules' miss
    model = fit(_dateline_docs(200))
    assert model is not None and model.fitted["starts"] == 200
    assert _sentences(model, text) == ["MADRID 1996-12-06", "Garcia said on Friday it won .", "The team lost 3 games ."]
    # what the rules find stays; a text of one word or none has nothing to add
    assert _sentences(model, "It won . They lost .") == ["It won .", "They lost ."]
    assert model.starts("x", [(0, 1)]) == [0] and model.starts("", []) == []
    assert fit(_dateline_docs(200), max_words=15 * 120).fitted["documents"] == 120  # the first documents only


def test_fit_needs_documents_with_starts_to_learn():
    one_per_doc = [[s] for doc in _dateline_docs(200) for s in doc]  # every sentence its own document
    assert fit(one_per_doc) is None
    marked = [[["It", "won", "."], ["They", "lost", "."]]] * 100  # every sentence ends in a mark: nothing to learn
    assert fit(marked) is None
    assert fit_columns({"tokens": [["a", "."]] * 10}) is None  # no document column


def test_saved_model_loads_with_the_same_starts(tmp_path):
    model = fit(_dateline_docs(100))
    model.save(tmp_path / FILE)
    back = load_for(tmp_path)
    text = "OSLO 1996-01-02 Ito said it won . BERN 1996-01-03 Rossi lost ."
    assert back.starts(text, split_words(text)) == model.starts(text, split_words(text))
    assert json.loads((tmp_path / FILE).read_text())["fitted"] == model.fitted
    assert load_for(tmp_path / "elsewhere") is None
    d = json.loads((tmp_path / FILE).read_text())
    (tmp_path / FILE).write_text(json.dumps({**d, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_for(tmp_path)


def test_conll2003_validation_starts_learnt_carry_to_test():
    """Fitted on CoNLL-2003's validation documents, the model finds most of the test documents' sentence starts
    the rules miss, with few false ones (956 of 1,557, and 112 false; with the words and shapes next to the gap
    alone, without the classes of the words around it that read a results table's rows, 588 and 337)."""
    val = load_split(DataConfig(), "validation")[:]
    model = fit_columns(val)
    assert model is not None and model.fitted["documents"] > 200
    test = load_split(DataConfig(), "test")[:]
    docs: dict[int, list] = {}
    for words, doc in zip(test["tokens"], test["document"], strict=True):
        docs.setdefault(doc, []).append(words)
    found = extra = missed = 0
    for sentences in docs.values():
        text = " ".join(" ".join(ws) for ws in sentences)
        spans = split_words(text)
        first = {a: k for k, (a, _) in enumerate(spans)}
        gold, pos = set(), 0
        for ws in sentences:
            gold.add(first.get(pos, -1))
            pos += len(" ".join(ws)) + 1
        rules, learnt = set(sentence_starts(text, spans)), set(model.starts(text, spans))
        assert rules <= learnt
        missed += len(gold - rules)
        found += len((learnt - rules) & gold)
        extra += len(learnt - rules - gold)
    assert found > 0.5 * missed and extra < 0.25 * found, (found, extra, missed)


def test_tagger_rows_follow_the_runs_sentence_model(tiny_ner_dir, tmp_path):
    """A run folder's sentences.json is the tagger's: its starts cut the rows (context `none`), and a folder
    without one keeps the rules'."""
    from helpers import tag_config

    from flaxner.tagging.reading import Record
    from flaxner.tagging.tagger import Tagger
    from flaxner.tagging.windows import encode

    every = SentenceModel([], {}, bias=10.0)  # every gap starts a sentence
    text = "MADRID 1996-12-06 Garcia said it won . The team lost ."
    run = tmp_path / "run"
    shutil.copytree(tiny_ner_dir, run)
    cfg = tag_config(context="none", words="conll")
    assert Tagger.from_pretrained(run, cfg).pipeline.sentences is None
    every.save(run / FILE)
    tagger = Tagger.from_pretrained(run, cfg)
    assert tagger.pipeline.sentences is not None
    [(_, doc)] = encode(tagger.backend, [Record(1, 0, text)], words="conll", context="none",
                        sentences=tagger.pipeline.sentences)
    [(_, rules)] = encode(tagger.backend, [Record(1, 0, text)], words="conll", context="none")
    assert len(doc.segments) == len(split_words(text)) and len(rules.segments) == 2
    tagger.tag([text])  # the pipeline's rows: one per word under this model
    assert tagger.stats.windows == len(split_words(text))


def test_segmentations_are_the_starts_at_each_threshold():
    model = fit(_dateline_docs(100))
    text = "OSLO 1996-01-02 Ito said it won . BERN 1996-01-03 Rossi lost . PARIS Brown 1996-02-01 said ."
    spans = split_words(text)
    ts = (0.05, 0.2, 0.5, 0.8, 0.95)
    cuts = model.segmentations(text, spans, ts)
    assert cuts == [SentenceModel(model.vocab, model.weights, model.bias, t).starts(text, spans) for t in ts]
    assert len(set(map(tuple, cuts))) > 1 and cuts[2] == model.starts(text, spans)  # thresholds change the cuts
    assert all(set(sentence_starts(text, spans)) <= set(c) for c in cuts)  # the rules' starts stay in every cut


def test_sentence_thresholds_label_each_token_by_the_mean_of_its_cuts(tiny_ner_dir, tmp_path, monkeypatch):
    """Tagged under several cuts into sentences (`tag.sentence_thresholds`), a token's label is the mean of its
    probabilities under each cut alone; a row that two cuts plan is read once."""
    from helpers import tag_config

    import flaxner.tagging.pipeline as pipeline
    from flaxner.tagging.tagger import Tagger

    run = tmp_path / "run"
    shutil.copytree(tiny_ner_dir, run)
    SentenceModel([], {}, bias=0.0).save(run / FILE)  # every gap the rules leave starts a sentence with p = 0.5
    text = "MADRID 1996-12-06 Garcia said it won . The team lost ."
    seen: list = []
    real = pipeline.entities_many
    monkeypatch.setattr(pipeline, "entities_many", lambda docs, *a: seen.extend(
        (d.pred.copy(), None if d.score is None else d.score.copy()) for d in docs) or real(docs, *a))
    probs, windows = {}, {}
    for t in (0.3, 0.7):  # each word a sentence; the rules' two sentences
        one = Tagger.from_pretrained(run, tag_config(context="none", words="conll", aggregation="average",
                                                     sentence_thresholds=(t,)))
        one.tag(text)
        probs[t], windows[t] = seen.pop()[0], one.stats.windows
    assert windows == {0.3: len(split_words(text)), 0.7: 2}
    assert (probs[0.3].argmax(-1) != probs[0.7].argmax(-1)).any()  # the cuts disagree somewhere
    # two cuts; three, two of them the same (each cut counts: the rules' rows weigh 2/3)
    for ts, mean in (((0.3, 0.7), (probs[0.3] + probs[0.7]) / 2), ((0.6, 0.3, 0.7), (probs[0.3] + 2 * probs[0.7]) / 3)):
        both = Tagger.from_pretrained(run, tag_config(context="none", words="conll", sentence_thresholds=ts))
        ents = both.tag(text)
        pred, score = seen.pop()
        top = np.sort(mean, -1)
        clear = top[:, -1] - top[:, -2] > 1e-4
        assert (pred[clear] == mean.argmax(-1)[clear]).all() and pred.dtype == np.int32
        np.testing.assert_allclose(score, mean.max(-1), atol=1e-5)
        assert both.stats.windows == windows[0.3] + windows[0.7]  # a row two cuts plan is read once
        assert all(text[e["start"]:e["end"]] == e["text"] for e in ents)
    same = Tagger.from_pretrained(run, tag_config(context="none", words="conll", sentence_thresholds=(0.6, 0.7)))
    same.tag(text)
    assert same.stats.windows == 2  # two equal cuts: one set of rows
    for cfg in (tag_config(context="document", sentence_thresholds=(0.3, 0.7)), tag_config(context="none")):
        plain = Tagger.from_pretrained(run if cfg.context == "document" else tiny_ner_dir, cfg)
        assert plain.cfg.sentence_thresholds == ()  # rows across sentences, or no sentence model: one cut


def test_lines_joined_into_a_document_keep_each_cut():
    from flaxner.tagging.windows import DocState, join_lines

    a = DocState(0, "", np.arange(6, dtype=np.int32), np.arange(6, dtype=np.int32), segments=[0, 3],
                 more_segments=[[0, 2, 3], [0]])
    b = DocState(1, "", np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32), segments=[0])
    doc = join_lines([a, b], cuts_sentences=True)
    assert doc.segments == [0, 3, 6] and doc.more_segments == [[0, 2, 3, 6], [0, 6]]


def test_a_run_folder_keeps_its_sentence_model_and_overwrite_removes_it(tiny_cfg, tmp_path):
    from flaxner.data.splits import Encoded
    from flaxner.rundir import RunDir, RunDirError
    from flaxner.training.setup import Split, save_run_files

    rd = RunDir(tmp_path / "run")
    rd.prepare(resume=False)
    enc = Encoded([], [], [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    model = fit(_dateline_docs(100))
    save_run_files(tiny_cfg, ["O", "B-PER", "I-PER"], {"train": Split("train", enc, [], sentences=model)}, rd)
    assert rd.config.is_file() and load_for(rd.path).weights == model.weights
    rd.prepare(resume=False, overwrite=True)  # a new run in its place starts without the old run's model
    assert not rd.sentences.exists() and load_for(rd.path) is None
    save_run_files(tiny_cfg, ["O"], {"train": Split("train", enc, [])}, rd)  # data without documents: no file
    assert rd.config.is_file() and not rd.sentences.exists()
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    rd.sentences.symlink_to(target)
    with pytest.raises(RunDirError, match="symlink"):
        rd.prepare(resume=False, overwrite=True)
    assert target.read_text() == "{}"
