import html
import re
from pathlib import Path

import numpy as np
import pytest

from flaxner.data.labels import spans_from_tags
from flaxner.data.splits import DataConfig, encode, load_split
from flaxner.models.loading import load_trained


def _sample_batch(tokenizer, snippet):
    ds = load_split(DataConfig(source=str(snippet.parent), train_split="snippet"), "snippet")
    texts = [" ".join(t) for t in ds[:]["tokens"][:3]]
    return tokenizer(texts, padding=True, return_tensors="np")


def test_export_loads_back_in_flax(tiny_run, snippet):
    model, params, tok, labels = load_trained(tiny_run["run_dir"])
    assert labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    assert model.config.label2id["B-LOC"] == 5
    batch = _sample_batch(tok, snippet)
    logits = model(batch["input_ids"], batch["attention_mask"], params=params).logits
    again, again_params = load_trained(Path(tiny_run["run_dir"]) / "model", scan_layers=True)[:2]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(
        again(batch["input_ids"], batch["attention_mask"], params=again_params).logits), rtol=1e-5, atol=1e-6)


def test_export_loads_in_pytorch_with_equal_logits(tiny_run, snippet):
    torch = pytest.importorskip("torch")
    from transformers import BertForTokenClassification

    model, params, tok, _ = load_trained(tiny_run["run_dir"])
    # the export's model.safetensors (PyTorch names) is what PyTorch loads
    pt = BertForTokenClassification.from_pretrained(Path(tiny_run["run_dir"]) / "model").eval()
    batch = _sample_batch(tok, snippet)
    flax_logits = np.asarray(model(batch["input_ids"], batch["attention_mask"], params=params).logits)
    with torch.no_grad():
        pt_logits = pt(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                       attention_mask=torch.from_numpy(batch["attention_mask"]).long()).logits.numpy()
    mask = batch["attention_mask"].astype(bool)
    assert np.abs(flax_logits[mask] - pt_logits[mask]).max() <= 1e-5
    assert pt.config.id2label[1] == "B-PER"


def test_missing_model_folder_is_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_trained(tmp_path / "empty")


def test_encode_matches_export_tokenizer(tiny_run, tiny_tokenizer, snippet):
    tok = load_trained(tiny_run["run_dir"])[2]
    ds = load_split(DataConfig(source=str(snippet.parent), train_split="snippet"), "snippet")
    a, b = encode(ds, tok, DataConfig()), encode(ds, tiny_tokenizer, DataConfig())
    assert all((x == y).all() for x, y in zip(a.input_ids, b.input_ids))


def test_a_run_records_its_sentence_length_for_the_tagger(tiny_run):
    from flaxner.config import load_config

    saved = load_config(f"{tiny_run['run_dir']}/config.yaml")
    assert saved.tag.segment_length > 0 and saved.tag.segment_length <= saved.data.max_length


MARK = re.compile(r"<mark [^>]*>(.*?)</mark><sup[^>]*>(.*?)</sup>")


def _marked(cell: str) -> list[tuple[str, str]]:
    return [(html.unescape(text), html.unescape(label)) for text, label in MARK.findall(cell)]


def _spans(tokens, tags) -> list[tuple[str, str]]:
    return [(" ".join(tokens[a:b]), t) for t, a, b in spans_from_tags(tags)]


def test_the_card_shows_the_exported_models_tags_of_validation_sentences(tiny_run):
    """README.md's sample predictions, inline and in samples.html (flaxner.data.display's table), are the first
    validation sentences with an entity, with their gold spans and the spans the exported model predicts for them
    when loaded back from model/."""
    from flaxner.training.evaluate import predict_split

    run = Path(tiny_run["run_dir"])
    ref = predict_split(run, "validation")
    shown = [i for i, g in enumerate(ref.gold) if len(g) <= 64 and any(t != "O" for t in g)][:5]
    card = (run / "README.md").read_text()
    section = card.split("\n## Sample predictions\n")[1].split("\n## Training procedure\n")[0]
    table = next(line for line in section.splitlines() if line.startswith("<table>"))
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>(.*?)</tr>", table)
    assert [int(i) for i, _, _ in rows] == shown and len(shown) == 5
    predicted = 0
    for i, errors, cells in ((int(i), int(e), c) for i, e, c in rows):
        gold_cell, pred_cell = cells.split('</td><td style="text-align:left">')
        gold, pred = _spans(ref.tokens[i], ref.gold[i]), _spans(ref.tokens[i], ref.pred[i])
        assert _marked(gold_cell) == gold and _marked(pred_cell) == pred
        assert errors == len(set(spans_from_tags(ref.gold[i])) ^ set(spans_from_tags(ref.pred[i])))
        predicted += len(pred)
    assert predicted > 0  # the tiny model tags something: the predicted cells are checked, not only empty
    page = (run / "samples.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and table in page and page.rstrip().endswith("</html>")
    assert (run / "model" / "samples.html").read_text(encoding="utf-8") == page
    assert (run / "model" / "README.md").read_text() == card


def test_a_card_without_samples_has_no_section_and_no_stale_page(tiny_run, tiny_cfg, tmp_path):
    """A run resumed from a checkpoint older than the samples: its card says nothing of them, and a samples.html
    left from before is removed rather than shown beside a card that does not describe it."""
    import json

    from flaxner.training.export import write_card

    summary = json.loads((Path(tiny_run["run_dir"]) / "summary.json").read_text())
    (tmp_path / "samples.html").write_text("old")
    write_card(tmp_path, tiny_cfg, {**summary, "samples": []})
    assert "Sample predictions" not in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "samples.html").exists()
    tokens = ["<script>", "Zürich", "&"]
    write_card(tmp_path, tiny_cfg, {**summary, "samples": [
        {"index": 7, "tokens": tokens, "gold_tags": ["O", "B-LOC", "O"], "pred_tags": ["B-ORG", "B-LOC", "O"]}]})
    card = (tmp_path / "README.md").read_text()
    assert "<script>" not in card and _marked(card) == [("Zürich", "LOC"), ("<script>", "ORG"), ("Zürich", "LOC")]
    assert "<tr><td>7</td><td>1</td>" in card and (tmp_path / "samples.html").is_file()
