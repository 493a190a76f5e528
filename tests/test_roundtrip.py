"""The loop NER teams run, end to end with a tiny model: an annotation tool's export -> `flaxner train` -> `flaxner tag
--format` -> what the tool imports. Label Studio (JSON export in, tasks with predictions out), CoNLL (columns in, the
same words out, readable as a split), spaCy (DocBin in, DocBin out with the same texts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flaxner.cli import main
from flaxner.config import DataConfig, load_config
from flaxner.data.readers import read_conll, read_file
from flaxner.data.splits import load_split
from flaxner.data.labels import CONLL_LABELS
from flaxner.data.display import words_to_text
from test_annotations import ls_annotation, ls_task

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # three tiny trainings and a CLI tagging each


@pytest.fixture(scope="module")
def sentences():
    """40 CoNLL-2003 validation sentences: words, IOB2 tags, and as text with character spans."""
    cols = load_split(DataConfig(limit=40), "validation")[:]
    out = []
    for words, ids in zip(cols["tokens"], cols["ner_tags"]):
        tags = [CONLL_LABELS[t] for t in ids]
        text, ents = words_to_text(words, tags)
        out.append({"words": words, "tags": tags, "text": text, "ents": ents})
    return out


def _train(tmp_path: Path, compile_cache: str, train_file: Path, name: str) -> Path:
    from flaxner.training.train import train

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.train_file={train_file}", f"data.validation_file={train_file}", "data.limit=0", "train.epochs=1",
        f"train.compilation_cache={compile_cache}", f"name={name}"])
    return Path(train(cfg, tmp_path / name).run_dir)


def _texts(tmp_path: Path, sentences) -> Path:
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"id": f"s{i}", "text": s["text"]}) + "\n" for i, s in enumerate(sentences)))
    return src


def test_label_studio_export_to_training_to_predictions_label_studio_imports(sentences, tmp_path, compile_cache):
    tasks = [ls_task(i, s["text"], [ls_annotation(i, [(e["start"], e["end"], e["label"]) for e in s["ents"]],
                                                  s["text"])]) for i, s in enumerate(sentences)]
    export = tmp_path / "project-1-at-2024-05-01.json"
    export.write_text(json.dumps(tasks, indent=2))
    assert read_file(export).tags == [s["tags"] for s in sentences]  # the export means the gold tags
    run = _train(tmp_path, compile_cache, export, "ls-run")
    out = tmp_path / "predictions.json"
    assert main(["tag", str(_texts(tmp_path, sentences)), "--model", str(run), "--format", "label-studio",
                 "-o", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())
    # Label Studio's import shape (guide/predictions): a list of tasks, `data` with the Text tag's value and
    # `predictions` with model_version, score and `result` regions {id, from_name, to_name, type, value}
    assert isinstance(got, list) and len(got) == len(sentences)
    regions = 0
    for task, s in zip(got, sentences):
        assert task["data"]["text"] == s["text"]
        (pred,) = task["predictions"]
        assert pred["model_version"] == "ls-run"
        for r in pred["result"]:
            assert {"id", "from_name", "to_name", "type", "value", "score"} <= set(r) and r["type"] == "labels"
            v = r["value"]
            assert s["text"][v["start"]:v["end"]] == v["text"] and len(v["labels"]) == 1 and 0 < r["score"] <= 1
        regions += len(pred["result"])
    assert regions > 0
    # a reviewer accepts every prediction as is: the tasks read back as training data with the predicted spans
    for task in got:
        task["annotations"] = [{"id": 1, "result": task["predictions"][0]["result"], "was_cancelled": False}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(got))
    back = read_file(reviewed)
    predicted = [[(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in t["predictions"][0]
                  ["result"]] for t in got]
    assert [[(e["start"], e["end"], e["label"]) for e in words_to_text(w, t)[1]]
            for w, t in zip(back.tokens, back.tags)] == predicted


def test_conll_to_tagging_to_conll_with_the_same_words(sentences, tmp_path, compile_cache):
    gold = tmp_path / "test.conll"
    gold.write_text("".join("".join(f"{w} {t}\n" for w, t in zip(s["words"], s["tags"])) + "\n" for s in sentences))
    run = _train(tmp_path, compile_cache, gold, "conll-run")
    out = tmp_path / "predicted.conll"
    assert main(["tag", str(_texts(tmp_path, sentences)), "--model", str(run), "--format", "conll", "-o", str(out),
                 "--no-progress"]) == 0
    pred = read_conll(out)
    assert pred.tokens == read_conll(gold).tokens
    assert {t for tags in pred.tags for t in tags} <= set(CONLL_LABELS)
    # a test split as `flaxner eval --data` and the training readers take it
    ds = load_split(DataConfig(test_file=str(out), labels=tuple(CONLL_LABELS)), "test")
    assert ds[:]["tokens"] == pred.tokens


def test_docbin_to_training_to_docbin_spacy_reads(sentences, tmp_path, compile_cache):
    spacy = pytest.importorskip("spacy", reason="the spacy extra: pip install 'flaxner[spacy]'")
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    nlp = spacy.blank("en")
    docs = []
    for s in sentences:
        doc = nlp(s["text"])
        doc.ents = [doc.char_span(e["start"], e["end"], e["label"]) for e in s["ents"]]
        docs.append(doc)
    train_file = tmp_path / "train.spacy"
    DocBin(docs=docs).to_disk(train_file)
    run = _train(tmp_path, compile_cache, train_file, "spacy-run")
    out = tmp_path / "predicted.spacy"
    assert main(["tag", str(_texts(tmp_path, sentences)), "--model", str(run), "--format", "spacy", "-o", str(out),
                 "--no-progress"]) == 0
    got = list(DocBin().from_disk(out).get_docs(Vocab()))
    assert [d.text for d in got] == [s["text"] for s in sentences]
    assert [d.user_data["flaxner"]["id"] for d in got] == [f"s{i}" for i in range(len(sentences))]
    assert all(e.label_ in {"PER", "ORG", "LOC", "MISC"} for d in got for e in d.ents)
