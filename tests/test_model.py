"""Loading and saving model folders without transformers' model classes: formats, the classifier rule, the one
log line, old exports and checkpoints, and each damaged file's one-line error."""

import json
import re
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxner.models.bert import BertConfig, FlaxBertForTokenClassification
from flaxner.models.weights import to_pytorch_names
from flaxner.config import ModelConfig
from flaxner.training.export import save_model
from flaxner.models.loading import ModelFileError, ModelNotReachable, load_trained, make_model, make_tokenizer, model_folder

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_RUN = FIXTURES / "old-run-tiny"  # written by flaxner e7f336c (transformers' Flax class): see its README
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random model saved by flaxner: (folder, model, params)."""
    cfg = ModelConfig(name="tests/fixtures/tiny-bert", random_init=True)
    tok = make_tokenizer(cfg)
    model, params = make_model(cfg, LABELS, seed=4, vocab_size=len(tok))
    out = tmp_path_factory.mktemp("export") / "model"
    save_model(model, params, tok, out)
    return out, model, params


def ids_mask():
    ids = np.random.RandomState(0).randint(5, 1000, (2, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    return ids * mask, mask


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_export_round_trip_from_each_format(exported, tmp_path):
    out, model, params = exported
    conf = json.loads((out / "config.json").read_text())
    assert conf["architectures"] == ["BertForTokenClassification"]
    assert conf["id2label"] == {str(i): lab for i, lab in enumerate(LABELS)}
    for keep in ("model.safetensors", "flax_model.msgpack"):
        d = tmp_path / keep
        shutil.copytree(out, d)
        (d / ("flax_model.msgpack" if keep == "model.safetensors" else "model.safetensors")).unlink()
        _, p2, tok, labels = load_trained(d)
        assert labels == list(LABELS) and tok.is_fast
        assert_trees_equal(jax.device_get(p2), jax.device_get(params))


def test_pytorch_loads_the_export(exported):
    torch = pytest.importorskip("torch")
    from transformers import BertForTokenClassification

    out, model, params = exported
    ref = BertForTokenClassification.from_pretrained(out).eval()
    assert ref.config.id2label[3] == "B-ORG"
    ids, mask = ids_mask()
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = np.asarray(model(ids, mask, params=params).logits)
    assert np.abs(got - want)[mask > 0].max() <= 1e-5


def test_pytorch_bin_is_read_with_weights_only(exported, tmp_path):
    torch = pytest.importorskip("torch")
    out, _, params = exported
    d = tmp_path / "bin"
    shutil.copytree(out, d)
    (d / "model.safetensors").unlink()
    (d / "flax_model.msgpack").unlink()
    torch.save({k: torch.from_numpy(v.copy()) for k, v in to_pytorch_names(jax.device_get(params)).items()},
               d / "pytorch_model.bin")
    assert_trees_equal(jax.device_get(load_trained(d)[1]), jax.device_get(params))
    torch.save({"w": torch.zeros(1), "evil": _Pickled()}, d / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match=r"pytorch_model.bin: refused"):
        load_trained(d)


class _Pickled:
    """An object that only a full (unsafe) unpickler would rebuild."""


def test_classifier_kept_when_labels_equal_else_new(exported, caplog):
    out, _, params = exported
    cfg = ModelConfig(name=str(out))
    with caplog.at_level(logging.INFO, logger="flaxner.models.loading"):
        _, same = make_model(cfg, LABELS, seed=9)
    assert np.array_equal(same["classifier"]["kernel"], params["classifier"]["kernel"])
    assert "new classifier" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flaxner.models.loading"):
        model, other = make_model(cfg, ("O", "B-X", "I-X"), seed=9)
    assert other["classifier"]["kernel"].shape == (32, 3) and model.config.labels == ("O", "B-X", "I-X")
    assert_trees_equal(jax.device_get(other["bert"]), jax.device_get(params["bert"]))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "new classifier for 3 labels (labels differ from the checkpoint's)" in lines[0]


@pytest.mark.slow
def test_minilm_reports_unused_and_new_in_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="flaxner.models.loading"):
        model, params = make_model(ModelConfig(name="minilm"), LABELS)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "unused: bert.embeddings.position_ids, bert.pooler.dense.bias, bert.pooler.dense.kernel" in lines[0]
    assert "new classifier for 9 labels (the checkpoint has none)" in lines[0]
    assert params["bert"]["encoder"]["layer"]["5"]["output"]["dense"]["kernel"].shape == (1536, 384)


def test_old_export_logits_and_entities_unchanged():
    """The export of a tiny run made by the previous code (transformers' Flax class) gives the logits and the
    entities that code computed."""
    from flaxner.tagging.tagger import Tagger

    want = json.loads((OLD_RUN / "expected.json").read_text())
    model, params, _, _ = load_trained(OLD_RUN)
    got = model(np.array(want["input_ids"]), np.array(want["attention_mask"]), params=params).logits
    mask = np.array(want["attention_mask"])
    assert np.abs(np.asarray(got) - np.array(want["logits"]))[mask > 0].max() <= 1e-5
    assert Tagger.from_pretrained(OLD_RUN, compilation_cache="", dtype="float32").tag(want["texts"]) == want["entities"]


def test_old_checkpoint_restores_into_the_new_tree(tmp_path):
    """An orbax checkpoint of the previous code restores into flaxner's model's state; its params are those the
    run exported (the last step was also the best)."""
    from flaxner.training.checkpoint import Checkpointer
    from flaxner.config import TrainConfig
    from flaxner.runtime import abstract, setup_runtime
    from flaxner.training.step import init_state, make_optimizer

    shutil.copytree(OLD_RUN / "checkpoints", tmp_path / "checkpoints")
    _, exported_params, _, _ = load_trained(OLD_RUN)
    model, params = make_model(ModelConfig(name="tests/fixtures/tiny-bert", random_init=True), LABELS, seed=0,
                               vocab_size=1000)
    tc = TrainConfig()
    state = init_state(params, make_optimizer(tc, 10), tc.seed, setup_runtime(tc))
    ckpt = Checkpointer(tmp_path / "checkpoints")
    restored, meta = ckpt.restore(abstract(state))
    ckpt.close()
    assert int(restored["step"]) == 2 and meta["labels"] == list(LABELS)
    assert_trees_equal(jax.device_get(restored["params"]), jax.device_get(exported_params))


def test_damaged_files_are_one_line_errors_naming_the_file(exported, tmp_path):
    out, _, _ = exported
    d = tmp_path / "m"
    shutil.copytree(out, d)
    (d / "flax_model.msgpack").unlink()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"model.safetensors: not a readable safetensors file"):
        load_trained(d)
    (d / "model.safetensors").unlink()
    (d / "flax_model.msgpack").write_bytes((out / "flax_model.msgpack").read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"flax_model.msgpack: not a readable Flax msgpack file"):
        load_trained(d)
    shutil.copy(out / "flax_model.msgpack", d / "flax_model.msgpack")
    for f in ("tokenizer.json", "vocab.txt"):
        (d / f).unlink(missing_ok=True)  # transformers 5 writes tokenizer.json only
    with pytest.raises(ModelFileError, match=r"no tokenizer files"):
        load_trained(d)
    (d / "flax_model.msgpack").unlink()
    with pytest.raises(ModelFileError, match=r"no weights"):
        load_trained(d)


def test_unreachable_hub_name_fails_fast_naming_the_offline_configs(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotReachable, match=r"not reachable.*configs/quickstart.yaml.*model.name=minilm"):
        model_folder("no-such-user/no-such-model")


def test_config_refuses_unsupported_architectures():
    with pytest.raises(ValueError, match=r"x/config.json: model_type 'gpt2' is not supported"):
        BertConfig.from_dict({"model_type": "gpt2"}, "x/config.json")


def test_compact_vocab_twin_has_the_compact_table(exported):
    from flaxner.models.vocab import CompactVocab

    _, model, params = exported
    ids = np.array([0, 3, 7], np.int32)
    remap = np.full(model.config.vocab_size, -1, np.int32)
    remap[ids] = np.arange(3)
    vocab = CompactVocab(ids, remap)
    twin = vocab.model(model)
    small = vocab.shrink(jax.device_get(params))
    assert isinstance(twin, FlaxBertForTokenClassification) and twin.config.vocab_size == 3
    x = np.array([[1, 2, 0]])
    full_ids = np.array([[3, 7, 0]])
    assert np.allclose(twin(x, np.ones_like(x), params=small).logits,
                       model(full_ids, np.ones_like(x), params=params).logits, atol=1e-6)


@pytest.mark.parametrize("key,value,says", [
    ("num_hidden_layers", 1000000, "num_hidden_layers 1000000 is not a whole number in [1, 256]"),
    ("vocab_size", 10 ** 12, "vocab_size 1000000000000 is not a whole number"),
    ("num_attention_heads", 0, "num_attention_heads 0 is not a whole number"),
    ("num_attention_heads", 5, "num_attention_heads 5 does not divide hidden_size"),
    ("hidden_size", True, "hidden_size True is not a whole number"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob 1.5 is not a probability"),
])
def test_an_untrusted_config_json_is_refused_before_anything_is_built(tiny_ner_dir, tmp_path, key, value, says):
    folder = tmp_path / "m"
    shutil.copytree(tiny_ner_dir, folder)
    conf = json.loads((folder / "config.json").read_text())
    conf[key] = value
    (folder / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ModelFileError, match="config.json: " + re.escape(says)):
        load_trained(folder)


def test_a_tokenizer_past_the_embedding_table_is_refused(tiny_ner_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_ner_dir, folder)
    conf = json.loads((folder / "config.json").read_text())
    conf["vocab_size"] = 100  # the tokenizer has 1,000 ids: the rest would read rows that do not exist
    (folder / "config.json").write_text(json.dumps(conf))
    from flaxner.models.checks import check_tokenizer_fits

    tok = make_tokenizer(ModelConfig(name=str(folder)))
    with pytest.raises(ModelFileError, match=r"the tokenizer has ids up to 999, past the model's vocab_size 100"):
        check_tokenizer_fits(tok, 100, folder)
