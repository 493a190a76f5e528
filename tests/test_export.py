from pathlib import Path

import numpy as np
import pytest

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
