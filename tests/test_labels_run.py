"""Label sets that are not CoNLL-2003's, end to end: the tiny model trains on them through `flaxner.training.train.train`,
exports exactly the data's inventory, scores only its types, resumes with it, and its card names the data.
The training tests are `slow` (three tiny runs with two classifier sizes: about a minute of compiling on 2 cores);
`tests/test_readers.py` checks the same inventories without training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flaxner.training.checkpoint import Checkpointer
from flaxner.config import DataConfig, ModelConfig, replace
from flaxner.data.splits import describe_model, load_split
from flaxner.training.export import read_metrics
from flaxner.data.labels import CONLL_LABELS
from flaxner.training.train import Interrupted, train

from helpers import assert_same_run, interrupt_at

NUMBER = re.compile(r"^\d+([.,:/-]\d+)*$")


def _sentences():
    """The first 16 sentences of the packaged CoNLL-2003 train split, as words and IOB2 tags."""
    cols = load_split(DataConfig(limit=16), "train")[:]
    return cols["tokens"], [[CONLL_LABELS[t] for t in tags] for tags in cols["ner_tags"]]


def _no_misc(words, tags):
    return ["O" if t.endswith("-MISC") else t for t in tags]


def _place_num(words, tags):
    """LOC renamed PLACE; runs of O-tagged numbers become a new type NUM (the rule bench.relabel_conll uses)."""
    out = []
    for w, t in zip(words, tags):
        if t.endswith("-LOC"):
            t = t[:2] + "PLACE"
        elif t == "O" and NUMBER.match(w):
            t = "I-NUM" if out and out[-1].endswith("-NUM") else "B-NUM"
        out.append(t)
    return out


def _folder(root: Path, name: str, rule) -> tuple[Path, set[str]]:
    """A CoNLL folder `name` with train.txt and valid.txt (the same 16 relabelled sentences, so every type is in
    the validation gold); returns it and the entity types written."""
    tokens, tags = _sentences()
    folder = root / name
    folder.mkdir()
    types, lines = set(), []
    for ws, ts in zip(tokens, tags):
        new = rule(ws, ts)
        types |= {t[2:] for t in new if t != "O"}
        lines += [f"{w} {t}" for w, t in zip(ws, new)] + [""]
    for split in ("train.txt", "valid.txt"):
        (folder / split).write_text("\n".join(lines) + "\n")
    return folder, types


def _inventory(types: set[str]) -> list[str]:
    return ["O", *(f"{p}-{t}" for t in sorted(types) for p in "BI")]


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("label-sets")
    return {"nomisc": _folder(root, "nomisc", _no_misc), "place-num": _folder(root, "place-num", _place_num)}


@pytest.fixture(scope="module")
def runs(tiny_cfg, variants, tmp_path_factory) -> dict:
    """One finished tiny run per label set: 2 epochs of 2 steps, in tiny.yaml's batch shapes (so the session's
    compilation cache has them once other tiny runs ran)."""
    out = {}
    for name, (folder, _) in variants.items():
        cfg = replace(tiny_cfg, data={"source": str(folder)}, train={"compile_workers": 0})
        out[name] = (cfg, train(cfg, tmp_path_factory.mktemp("runs") / name))
    return out


def test_the_label_sets_are_what_the_test_means(variants):
    assert variants["nomisc"][1] == {"LOC", "ORG", "PER"}
    assert variants["place-num"][1] == {"MISC", "NUM", "ORG", "PER", "PLACE"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nomisc", "place-num"])
def test_a_run_exports_and_scores_exactly_the_datas_labels(runs, variants, name):
    _, summary = runs[name]
    types = variants[name][1]
    run_dir = Path(summary.run_dir)
    conf = json.loads((run_dir / "model" / "config.json").read_text())
    want = _inventory(types)
    assert conf["id2label"] == {str(i): t for i, t in enumerate(want)}
    assert conf["label2id"] == {t: i for i, t in enumerate(want)}
    ck = Checkpointer(run_dir / "checkpoints")
    assert ck.read_labels() == want
    ck.close()
    evals = [r for r in read_metrics(run_dir) if r["type"] == "eval"]
    assert len(evals) == len(summary.history) == 2
    for row in evals:  # validation holds every type, and the model can predict no other
        assert set(row["per_type"]) == types


@pytest.mark.slow
def test_resume_keeps_the_inferred_labels(runs, tmp_path, monkeypatch):
    cfg, ref = runs["place-num"]
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(Interrupted, match="at step 3"):
            train(cfg, out)
    ck = Checkpointer(out / "checkpoints")
    ref_labels = list(json.loads((Path(ref.run_dir) / "model" / "config.json").read_text())["id2label"].values())
    assert ck.read_labels() == ref_labels
    ck.close()
    summary = train(cfg, out, resume=True)
    assert_same_run(summary, ref, out)
    assert list(json.loads((out / "model" / "config.json").read_text())["id2label"].values()) == ref_labels


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nomisc", "place-num"])
def test_the_card_names_the_data_and_base_model_used(runs, name):
    card = (Path(runs[name][1].run_dir) / "README.md").read_text()
    assert f"on {name} (a local data folder)" in card
    assert "conll2003" not in card.lower() and "datasets:" not in card  # no hub dataset to link
    assert "randomly initialised BERT (vocabulary of tests/fixtures/tiny-bert)" in card


def test_the_card_names_minilm_as_what_it_is():
    assert describe_model(ModelConfig(name="minilm")).startswith("sentence-transformers/all-MiniLM-L6-v2 (English, "
                                                                  "uncased")
