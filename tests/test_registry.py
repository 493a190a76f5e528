"""The family registry: every row imports, an unknown model_type is one line naming the families, and make_model,
load_trained and the compact vocabulary all go through the rows (the same class and tree as `build`)."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxner.config import ModelConfig
from flaxner.models import loading
from flaxner.models.loading import build, load_trained, make_model, read_config
from flaxner.models.registry import FAMILIES, family_of
from flaxner.models.vocab import embed_path

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-bert"
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# What a tiny RoBERTa's config.json changes of the tiny BERT's (as test_bert's XLM-R).
ROBERTA = {"model_type": "roberta", "pad_token_id": 1, "type_vocab_size": 1, "max_position_embeddings": 20}
# The other families' tiny config.json's (DistilBERT's own names for the same sizes; ELECTRA's narrower embeddings).
OTHERS = {"roberta": ROBERTA, "xlm-roberta": ROBERTA,
          "distilbert": {"model_type": "distilbert", "vocab_size": 1000, "dim": 32, "n_layers": 2, "n_heads": 2,
                         "hidden_dim": 64, "max_position_embeddings": 512},
          "electra": {"embedding_size": 16}}


def tiny_folder(d: Path, model_type: str) -> Path:
    """The tiny BERT fixture (config + tokenizer), as `model_type`."""
    shutil.copytree(TINY, d)
    if model_type != "bert":
        conf = {} if model_type == "distilbert" else json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**conf, **OTHERS[model_type], "model_type": model_type}))
    return d


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_row_imports_and_serves_its_model_types(family):
    config_class, model_class = family.config_class(), family.model_class()
    assert isinstance(config_class, type) and isinstance(model_class, type)
    assert family.embed_path[0] == family.prefix
    for t in family.model_types:
        assert family_of(t) is family
        conf = config_class.from_dict({"model_type": t, "id2label": {"0": "O"}})
        assert conf.model_type == t and isinstance(family.max_positions(conf), int)
        assert conf.to_dict()["architectures"] == [family.pytorch_architecture]


def test_unknown_model_type_is_one_line_naming_the_families(tmp_path):
    with pytest.raises(ValueError) as e:
        family_of("deberta-v2")
    assert str(e.value) == ("config.json: model_type 'deberta-v2' is not supported; flaxner has: bert, roberta, "
                            "xlm-roberta, distilbert, electra, modernbert")
    d = tiny_folder(tmp_path / "m", "bert")
    (d / "config.json").write_text(json.dumps({"model_type": "deberta-v2", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"^\S+/m/config.json: model_type 'deberta-v2' is not supported; "
                                         r"flaxner has: bert, roberta, xlm-roberta, distilbert, electra, modernbert$"):
        read_config(d)
    (d / "config.json").write_text(json.dumps({"model_type": ["bert"]}))
    with pytest.raises(ValueError, match=r"model_type \['bert'\] is not supported; flaxner has: bert"):
        read_config(d)


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert", "electra"])
def tiny(request, tmp_path_factory):
    """(model_type, folder with its config.json and the fixture tokenizer)."""
    return request.param, tiny_folder(tmp_path_factory.mktemp(request.param) / "base", request.param)


def test_make_model_random_builds_what_build_builds(tiny):
    model_type, folder = tiny
    cfg = ModelConfig(name=str(folder), random_init=True)
    model, params = make_model(cfg, LABELS, seed=3)
    ref = build(read_config(folder).replace(labels=LABELS), cfg)
    assert type(model) is type(ref) is family_of(model_type).model_class()
    assert model.config == ref.config and model.config.model_type == model_type
    assert_trees_equal(jax.device_get(params), jax.device_get(ref.init_params(3)))


def export(folder: Path, out: Path):
    """A random model of `folder`'s config saved into `out` with the fixture tokenizer: (model, params)."""
    model, params = make_model(ModelConfig(name=str(folder), random_init=True), LABELS, seed=5)
    model.save_pretrained(out, params=params)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(folder / f, out / f)
    return model, params


def test_load_trained_and_make_model_build_through_build(tiny, tmp_path, monkeypatch):
    model_type, folder = tiny
    model, params = export(folder, tmp_path / "export")
    out = tmp_path / "export"
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        family_of(model_type).pytorch_architecture]
    built = []
    monkeypatch.setattr(loading, "build", lambda config, cfg: built.append(cfg) or build(config, cfg))

    trained, trained_params, _, labels = load_trained(out, scan_layers=True)
    assert built[-1].scan_layers and built[-1].dtype == "float32" and labels == list(LABELS)
    again, again_params = make_model(ModelConfig(name=str(out)), LABELS, seed=9)
    assert len(built) == 2
    ref = build(read_config(out), ModelConfig())
    for m, p in ((trained, trained_params), (again, again_params)):
        assert type(m) is type(ref) and m.config == ref.config
        assert jax.tree.structure(p) == jax.tree.structure(ref.params_shape())
        assert_trees_equal(jax.device_get(p), jax.device_get(params))  # the same labels: classifier kept


def test_embed_path_is_the_rows_for_both_trees(tiny):
    model_type, folder = tiny
    model, params = make_model(ModelConfig(name=str(folder), random_init=True), LABELS, vocab_size=77)
    path = embed_path(params)
    assert path == family_of(model_type).embed_path and path[0] == model_type
    table = params
    for k in path:
        table = table[k]
    assert table.shape == (77, getattr(model.config, "embedding_size", model.config.hidden_size))  # ELECTRA: narrower
    with pytest.raises(ValueError, match=r"no word-embedding table .* top keys \['classifier'\]"):
        embed_path({"classifier": params["classifier"]})


def test_tagger_caps_max_length_at_the_rows_max_positions(tmp_path):
    from flaxner.tagging.tagger import Tagger
    from helpers import tag_config

    out = tmp_path / "export"
    export(tiny_folder(tmp_path / "base", "roberta"), out)  # max_position_embeddings 20, pad_token_id 1: 18
    with pytest.raises(ValueError, match=r"tag.max_length 19 is more than the model's max_position_embeddings 18"):
        Tagger.from_pretrained(out, tag_config(buckets=(16, 19), max_length=19, stride=8))
    Tagger.from_pretrained(out, tag_config(buckets=(16, 18), max_length=18, stride=8))


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_roberta_positions_start_after_pad(model_type, tmp_path):
    """RoBERTa / XLM-R number positions from pad_token_id + 1, so a table of 20 rows (pad 1) holds 18 tokens, as
    in PyTorch (whose index error past it JAX would hide by clamping): the rows' max_positions says so."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForTokenClassification

    family = family_of(model_type)
    conf = read_config(tiny_folder(tmp_path / "m", model_type)).replace(labels=LABELS)
    assert family.max_positions(conf) == 18
    assert family.max_positions(conf.replace(max_position_embeddings=514)) == 512  # the hub's shape
    assert family_of("bert").max_positions(conf.replace(model_type="bert")) == 20
    d = conf.to_dict()
    ref = AutoModelForTokenClassification.from_config(AutoConfig.for_model(d.pop("model_type"), **d)).eval()
    with torch.no_grad():
        ref(torch.full((1, 18), 5), token_type_ids=torch.zeros(1, 18, dtype=torch.long))  # 18 tokens fit
        with pytest.raises(IndexError, match="index out of range"):  # the 19th reads position 20 of 0..19
            ref(torch.full((1, 19), 5), token_type_ids=torch.zeros(1, 19, dtype=torch.long))
