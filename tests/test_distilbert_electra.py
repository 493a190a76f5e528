"""flaxner's DistilBERT and ELECTRA against transformers' PyTorch classes on the same random weights (logits, one
train step's loss and gradients, the export loaded by AutoModelForTokenClassification, bare-encoder checkpoints),
and a tiny run of each through train, resume, eval and tag."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flaxner.config import ModelConfig
from flaxner.models.loading import make_model, read_config
from flaxner.models.registry import family_of
from flaxner.models.weights import to_pytorch_names
from flaxner.training.step import loss_fn
from helpers import FIXTURE, SENTENCES, interrupt_at

torch = pytest.importorskip("torch")

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# Small config.json's of each shape the module builds (vocab 1000: the fixture tokenizer's).
CONFIGS = {
    "distilbert": {"model_type": "distilbert", "vocab_size": 1000, "dim": 32, "n_layers": 2, "n_heads": 2,
                   "hidden_dim": 64, "max_position_embeddings": 128},
    "distilbert-sinusoidal": {"model_type": "distilbert", "vocab_size": 1000, "dim": 32, "n_layers": 2, "n_heads": 2,
                              "hidden_dim": 64, "max_position_embeddings": 128, "sinusoidal_pos_embds": True,
                              "activation": "relu"},
    "electra": {"model_type": "electra", "vocab_size": 1000, "embedding_size": 16, "hidden_size": 32,
                "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128},
    "electra-unprojected": {"model_type": "electra", "vocab_size": 1000, "embedding_size": 32, "hidden_size": 32,
                            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                            "max_position_embeddings": 128},
}
NO_DROPOUT = {"distilbert": dict(dropout=0.0, attention_dropout=0.0),
              "electra": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)}


def tiny_model(name: str, scan: bool = False, remat: bool = False, dtype=np.float32, **kw):
    conf = CONFIGS[name]
    family = family_of(conf["model_type"])
    config = family.config_class().from_dict(conf).replace(labels=LABELS, **kw)
    return family.model_class()(config, dtype, scan_layers=scan, remat=remat)


def noisy_params(model, seed=1):
    """Fresh params with every leaf perturbed (LayerNorm scales and biases not trivially 1 and 0)."""
    p = model.init_params(0)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(p))))
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), p)


def batch(seed=0):
    """[3, 9] ids with right padding of 0, 3 and 6 positions, and labels on the tokens."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, 1000, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    labels = np.where(mask > 0, rng.randint(0, len(LABELS), ids.shape), -100)
    return np.where(mask > 0, ids, 0), mask, labels


def pytorch_twin(model, params):
    """transformers' PyTorch *ForTokenClassification of `model`'s config.json, holding `params`."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    d = model.config.to_dict()
    ref = AutoModelForTokenClassification.from_config(AutoConfig.for_model(d.pop("model_type"), **d))
    assert type(ref).__name__ == family_of(model.config.model_type).pytorch_architecture
    state = {k: torch.from_numpy(v.copy()) for k, v in to_pytorch_names(jax.device_get(params)).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref


def max_diff_on_tokens(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask > 0].max())


# scanned layers: here under `slow`; the default suite checks them through the gradients test (scan + remat)
@pytest.mark.parametrize("name,scan", [(n, False) for n in sorted(CONFIGS)] + [
    pytest.param("distilbert", True, marks=pytest.mark.slow), pytest.param("electra", True, marks=pytest.mark.slow)])
def test_logits_equal_pytorch(name, scan):
    model = tiny_model(name, scan)
    params = noisy_params(model)
    ids, mask, _ = batch()
    ref = pytorch_twin(model, params).eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = model(ids, mask, params=params).logits
    assert got.shape == (3, 9, len(LABELS))
    assert max_diff_on_tokens(got, want, mask) <= 1e-5


@pytest.mark.parametrize("name", ["distilbert", "electra"])
def test_train_step_loss_and_grads_equal_pytorch(name):
    """flaxner's loss and its gradient for every parameter against PyTorch's loss.backward() (no dropout: the two
    draw different masks)."""
    model = tiny_model(name, **NO_DROPOUT[name])
    params = noisy_params(model)
    ids, mask, labels = batch(seed=3)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, {"input_ids": ids, "attention_mask": mask, "labels": labels}, jax.random.PRNGKey(0), model.__call__)
    ref = pytorch_twin(model, params).train()
    out = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
    out.loss.backward()
    want = family_of(model.config.model_type).from_pytorch_names(
        {k: p.grad.numpy() for k, p in ref.named_parameters()})
    got = flatten_dict(jax.device_get(grads))
    assert abs(float(loss) - out.loss.item()) <= 1e-6
    assert set(got) == set(want)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in got) <= 1e-6
    assert max(float(np.abs(g).max()) for g in got.values()) > 1e-3  # not all zero
    # the scanned, rematerialised stack: the same gradients, in the same per-layer tree
    scanned = tiny_model(name, scan=True, remat=True, **NO_DROPOUT[name])
    g2 = jax.grad(lambda p: loss_fn(p, {"input_ids": ids, "attention_mask": mask, "labels": labels},
                                    jax.random.PRNGKey(0), scanned.__call__)[0])(params)
    g2 = flatten_dict(jax.device_get(g2))
    assert set(g2) == set(got) and max(float(np.abs(got[k] - g2[k]).max()) for k in got) <= 1e-6


@pytest.mark.parametrize("name", ["distilbert", "electra"])
def test_bfloat16_logits_near_float32(name):
    import jax.numpy as jnp

    params = noisy_params(tiny_model(name))
    ids, mask, _ = batch()
    full = tiny_model(name)(ids, mask, params=params).logits
    half = tiny_model(name, dtype=jnp.bfloat16)(ids, mask, params=params).logits
    assert half.dtype == jnp.bfloat16
    assert 0 < max_diff_on_tokens(half.astype(np.float32), full, mask) <= 0.05


@pytest.mark.parametrize("name", ["distilbert", "electra"])
def test_dropout_is_active_only_in_training(name):
    model = tiny_model(name)
    params = noisy_params(model)
    ids, mask, _ = batch()
    rng = jax.random.PRNGKey(0)
    eval_a = model(ids, mask, params=params).logits
    eval_b = model(ids, mask, params=params, dropout_rng=rng).logits
    train = model(ids, mask, params=params, dropout_rng=rng, train=True).logits
    assert np.array_equal(eval_a, eval_b) and float(np.abs(train - eval_a).max()) > 1e-3


@pytest.mark.parametrize("name", ["distilbert-sinusoidal", "electra"])
def test_export_loads_in_pytorch_with_the_same_logits_and_back(name, tmp_path):
    from transformers import AutoModelForTokenClassification

    model = tiny_model(name)
    params = noisy_params(model)
    model.save_pretrained(tmp_path, params=params)
    ref = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == family_of(model.config.model_type).pytorch_architecture
    assert ref.config.id2label == dict(enumerate(LABELS))
    ids, mask, _ = batch(seed=5)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert max_diff_on_tokens(model(ids, mask, params=params).logits, want, mask) <= 1e-5
    again, back = make_model(ModelConfig(name=str(tmp_path)), LABELS)  # flaxner reads its export back
    assert again.config == model.config
    leaves = zip(jax.tree.leaves(jax.device_get(back)), jax.tree.leaves(jax.device_get(params)), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)


BARE = {"distilbert": "DistilBertModel", "electra": "ElectraModel", "electra-pretraining": "ElectraForPreTraining"}


@pytest.mark.parametrize("kind", sorted(BARE))
def test_encoder_checkpoint_loads_with_a_fresh_classifier(kind, tmp_path):
    """A bare encoder (DistilBertModel, ElectraModel: names without the prefix) and the hub's ELECTRA
    discriminators (ElectraForPreTraining: a head flaxner leaves out) load; the classifier is new."""
    import transformers

    conf = CONFIGS[kind.split("-")[0]]
    config_class = transformers.AutoConfig.for_model(conf["model_type"], **{k: v for k, v in conf.items()
                                                                             if k != "model_type"})
    torch.manual_seed(0)
    encoder = getattr(transformers, BARE[kind])(config_class)
    encoder.save_pretrained(tmp_path)
    model, params = make_model(ModelConfig(name=str(tmp_path)), LABELS, seed=2)
    family = family_of(conf["model_type"])
    got = flatten_dict(jax.device_get(params))
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    want = family.from_pytorch_names(state)
    want = {((family.prefix, *k) if k[0] in family.bare_keys else k): v for k, v in want.items()}
    backbone = [k for k in got if k[0] == family.prefix]
    assert len(backbone) == len(got) - 2 and all(np.array_equal(got[k], want[k]) for k in backbone)
    assert got[("classifier", "kernel")].shape == (32, len(LABELS)) and not got[("classifier", "bias")].any()


def test_distilbert_config_reads_berts_names_and_refuses_bad_sizes(tmp_path):
    from flaxner.models.checks import ModelFileError

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "distilbert", "hidden_size": 48, "num_hidden_layers": 3,
                                "num_attention_heads": 4}))
    conf = read_config(tmp_path)
    assert (conf.dim, conf.n_layers, conf.n_heads) == (48, 3, 4) and conf.hidden_size == 48
    assert conf.replace(hidden_size=64, intermediate_size=128).to_dict()["hidden_dim"] == 128
    for bad, msg in (({"n_layers": 10 ** 6}, r"n_layers 1000000 is not a whole number in \[1, 256\]"),
                     ({"dim": 30, "n_heads": 4}, "n_heads 4 does not divide dim 30"),
                     ({"dropout": 1.5}, r"dropout 1.5 is not a probability"),
                     ({"model_type": "electra", "embedding_size": -1}, "embedding_size -1 is not a whole number")):
        path.write_text(json.dumps({"model_type": "distilbert", **bad}))
        with pytest.raises(ModelFileError, match=rf"config.json: {msg}"):
            read_config(tmp_path)


# --- a tiny run of each family: train, resume, eval, tag ----------------------------------------------------------


def family_folder(d: Path, name: str) -> Path:
    """A model folder with `name`'s config.json (512 positions, as the hub's) and the fixture's WordPiece
    tokenizer."""
    shutil.copytree(FIXTURE, d)
    (d / "config.json").write_text(json.dumps({**CONFIGS[name], "max_position_embeddings": 512}))
    return d


def assert_offsets_slice_back(texts, tagged) -> int:
    n = 0
    for text, ents in zip(texts, tagged, strict=True):
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"] and e["label"] in ("PER", "LOC", "ORG", "MISC"), e
            n += 1
    return n


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distilbert", "electra"])
def test_train_resume_eval_tag(name, tmp_path, monkeypatch, compile_cache):
    from flaxner.cli import main
    from flaxner.config import load_config
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.tagging.tagger import Tagger
    from flaxner.training.train import Interrupted, train
    from helpers import ROOT, tag_config

    folder = family_folder(tmp_path / "base", name)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model.name={folder}", "data.limit=16", "train.epochs=2",
                                                       f"train.compilation_cache={compile_cache}"])
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(Interrupted, match="at step 2"):
            train(cfg, run)
    summary = train(cfg, run, resume=True)
    assert summary.steps == 4 and [h["step"] for h in summary.history] == [2, 4]
    assert read_config(run / "model").model_type == CONFIGS[name]["model_type"]

    assert main(["eval", "--model", str(run), "--split", "validation", "--limit", "20"]) == 0
    texts = [s.replace(" .", ".") for s in SENTENCES]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert main(["tag", str(src), "--model", str(run), "-o", str(tmp_path / "out.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == len(texts)
    assert_offsets_slice_back(texts, [x["entities"] for x in lines])

    # a confident random model of the family (classifier scaled up), so that there are entities to slice
    model, params = make_model(ModelConfig(name=str(folder), random_init=True), CONLL_LABELS, seed=0)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 8
    model.save_pretrained(tmp_path / "ner", params=params)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(folder / f, tmp_path / "ner" / f)
    tagged = Tagger.from_pretrained(tmp_path / "ner", tag_config()).tag(texts)
    assert assert_offsets_slice_back(texts, tagged) > 0
