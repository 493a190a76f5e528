"""Real weights, real data: the offline MiniLM learns CoNLL-2003 (minutes of CPU; `pytest -m slow`)."""

import json
from pathlib import Path

import pytest

from flaxner.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, compile_cache):
    from flaxner.training.train import train

    cfg = load_config("configs/quickstart.yaml", [f"train.compilation_cache={compile_cache}", "data.limit=1200",
                                                  "train.eval_test=true"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "minilm")


def test_minilm_learns_entities(minilm_run):
    ev = minilm_run["history"][-1]
    # 75 steps on 1,200 sentences from pretrained MiniLM; a random model scores ~0
    assert ev["f1"] > 0.45, ev
    assert ev["accuracy"] > 0.85
    assert minilm_run["test"]["f1"] > 0.4
    assert set(minilm_run["test"]["per_type"]) == {"LOC", "MISC", "ORG", "PER"}


def test_minilm_export_tags_text(minilm_run):
    from flaxner.tagging.tagger import Tagger

    tagger = Tagger.from_pretrained(minilm_run["run_dir"])
    text = "The European Commission said on Thursday it disagreed with German advice in Brussels."
    ents = tagger.tag([text])[0]
    assert ents, "no entity found"
    for e in ents:
        assert text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
    assert json.loads((Path(minilm_run["run_dir"]) / "summary.json").read_text())["steps"] == 75
