"""flaxner's ModernBERT against transformers' PyTorch ModernBertForTokenClassification on the same random weights:
logits (padding, rows longer than the local window), one train step's loss and gradients, export -> PyTorch load,
a bare ModernBertModel checkpoint, scanned layers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flaxner.models.modernbert import Backbone, FlaxModernBertForTokenClassification, ModernBertConfig, scan_plan
from flaxner.models.weights import to_pytorch_names
from flaxner.training.step import loss_fn

torch = pytest.importorskip("torch")
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# 5 layers: global, local, local, global, local (the scan's period 3 once, then one unrolled); window +-4
TINY = {"model_type": "modernbert", "vocab_size": 120, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 5, "num_attention_heads": 4, "max_position_embeddings": 64, "local_attention": 8,
        "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
        "pad_token_id": 3, "cls_token_id": 1, "sep_token_id": 2, "bos_token_id": 1, "eos_token_id": 2}
BIASES = {"norm_bias": True, "attention_bias": True, "mlp_bias": True, "classifier_bias": True}


def tiny_config(**kw) -> ModernBertConfig:
    return ModernBertConfig.from_dict({**TINY, **kw}).replace(labels=LABELS)


def noisy_params(model, seed=1):
    """Fresh params with every leaf perturbed (norm scales not 1, biases not 0)."""
    p = model.init_params(0)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(p))))
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), p)


def logits_of(model, params, ids, mask, rng=None, train=False):
    """The model's logits, jitted (one compile instead of an op-by-op run)."""
    return jax.jit(lambda p, r: model(ids, mask, params=p, dropout_rng=r, train=train).logits)(params, rng)


def batch(seq=20, pad=3, seed=0):
    """[3, seq] ids with right padding of 0, 7 and seq - 4 positions: rows longer than the +-4 window."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, TINY["vocab_size"], (3, seq))
    mask = np.ones_like(ids)
    mask[1, seq - 7:], mask[2, 4:] = 0, 0
    return np.where(mask > 0, ids, pad), mask


def reference(config: ModernBertConfig, params, attn="eager"):
    from transformers import ModernBertConfig as HFConfig
    from transformers import ModernBertForTokenClassification

    ref = ModernBertForTokenClassification(HFConfig(**config.to_dict(), attn_implementation=attn)).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in to_pytorch_names(params).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref


def torch_logits(ref, ids, mask):
    with torch.no_grad():
        return ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def max_diff_on_tokens(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask > 0].max())


@pytest.mark.parametrize("kw,attn", [({}, "eager"), (BIASES, "sdpa")], ids=["no-biases", "biases"])
def test_logits_equal_pytorch(kw, attn):
    model = FlaxModernBertForTokenClassification(tiny_config(**kw))
    params = noisy_params(model)
    ids, mask = batch()
    ours = logits_of(model, params, ids, mask)
    assert ours.shape == (3, 20, len(LABELS))
    ref = reference(model.config, params, attn)
    assert max_diff_on_tokens(ours, torch_logits(ref, ids, mask), mask) <= 1e-5
    # the windows matter: with every layer global the logits move
    wide = FlaxModernBertForTokenClassification(model.config.replace(local_attention=64))
    assert max_diff_on_tokens(logits_of(wide, params, ids, mask), ours, mask) > 1e-3


def test_scanned_layers_give_the_unrolled_logits():
    conf = tiny_config(**BIASES)
    params = noisy_params(FlaxModernBertForTokenClassification(conf))
    ids, mask = batch()
    a, b = (logits_of(FlaxModernBertForTokenClassification(conf, scan_layers=s), params, ids, mask)
            for s in (False, True))
    assert max_diff_on_tokens(a, b, mask) <= 1e-6


@pytest.mark.slow
def test_scanned_layers_give_the_unrolled_loss_and_gradients():
    conf = tiny_config(**BIASES)
    assert scan_plan(conf.attention_types) == (3, 1)
    params = noisy_params(FlaxModernBertForTokenClassification(conf))
    ids, mask = batch()
    b = {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask > 0, ids % len(LABELS), -100)}
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=3)
    runs = [grad(params, b, jax.random.PRNGKey(0), FlaxModernBertForTokenClassification(conf, scan_layers=s,
                                                                                         remat=r).__call__)
            for s, r in ((False, False), (True, False), (True, True))]
    (loss, _), grads = runs[0]
    for (other, _), g in runs[1:]:
        assert abs(float(other) - float(loss)) <= 1e-6
        assert jax.tree.structure(g) == jax.tree.structure(grads)
        assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, grads))) <= 1e-6


def test_bfloat16_runs_close_to_float32():
    conf = tiny_config()
    params = noisy_params(FlaxModernBertForTokenClassification(conf))
    ids, mask = batch()
    ref = logits_of(FlaxModernBertForTokenClassification(conf), params, ids, mask)
    for scan in (False, True):
        bf = FlaxModernBertForTokenClassification(conf, jnp.bfloat16, scan_layers=scan)
        logits = logits_of(bf, params, ids, mask)
        assert logits.dtype == jnp.bfloat16
        # bf16 keeps 8 bits of mantissa: a few hundredths on logits of unit size through 5 layers
        assert max_diff_on_tokens(logits.astype(jnp.float32), ref, mask) <= 0.1


def test_scan_plan():
    g, loc = "full_attention", "sliding_attention"
    assert scan_plan((g,) + (loc, loc, g) * 7) == (3, 7)  # 22 layers, as ModernBERT-base
    assert scan_plan((g,) + (loc, loc, g) * 2 + (loc,)) == (3, 2)
    assert scan_plan((g,) * 4) == (1, 3)
    assert scan_plan((g, loc, g, g)) == (3, 1)
    assert scan_plan((g,)) == (1, 0)


def test_train_step_loss_and_grads_equal_pytorch():
    """flaxner's loss (mean cross-entropy over labelled tokens) and its gradients against PyTorch's
    CrossEntropyLoss(ignore_index=-100) on the same batch, without dropout (no shared random stream)."""
    model = FlaxModernBertForTokenClassification(tiny_config(**BIASES))
    params = noisy_params(model)
    ids, mask = batch()
    labels = np.where(mask > 0, np.arange(ids.size).reshape(ids.shape) % len(LABELS), -100)
    b = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=3)
    (loss, _), grads = grad(params, b, jax.random.PRNGKey(0), model.__call__)
    ref = reference(model.config, params).train()
    out = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
    out.loss.backward()
    assert abs(float(loss) - out.loss.item()) <= 1e-6
    want = {k: v.grad.numpy() for k, v in ref.named_parameters()}
    got = to_pytorch_names(jax.device_get(grads))
    assert set(got) == set(want)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-6
    assert max(float(np.abs(v).max()) for v in want.values()) > 1e-3  # not all zero


def test_dropout_is_active_only_in_training():
    model = FlaxModernBertForTokenClassification(tiny_config(attention_dropout=0.1, mlp_dropout=0.1))
    params = noisy_params(model)
    ids, mask = batch()
    rng = jax.random.PRNGKey(0)
    eval_a = logits_of(model, params, ids, mask)
    assert jnp.array_equal(eval_a, logits_of(model, params, ids, mask, rng))
    assert float(jnp.abs(logits_of(model, params, ids, mask, rng, train=True) - eval_a).max()) > 1e-3


def test_export_loads_in_pytorch_with_the_same_logits(tmp_path):
    from transformers import AutoModelForTokenClassification

    model = FlaxModernBertForTokenClassification(tiny_config())
    params = noisy_params(model)
    model.save_pretrained(tmp_path, params=params)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["architectures"] == ["ModernBertForTokenClassification"] and conf["model_type"] == "modernbert"
    ref = AutoModelForTokenClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(ref).__name__ == "ModernBertForTokenClassification"
    assert ref.config.id2label == dict(enumerate(LABELS)) and ref.config.sliding_window == 4
    ids, mask = batch()
    assert max_diff_on_tokens(logits_of(model, params, ids, mask), torch_logits(ref, ids, mask), mask) <= 1e-5


def test_bare_encoder_checkpoint_loads_with_a_fresh_head_and_classifier(tmp_path, caplog):
    from safetensors.torch import save_file
    from transformers import ModernBertConfig as HFConfig
    from transformers import ModernBertModel

    from flaxner.config import ModelConfig
    from flaxner.models.loading import make_model

    conf = tiny_config()
    bare = ModernBertModel(HFConfig(**conf.replace(labels=()).to_dict())).eval()
    save_file({k: v.contiguous() for k, v in bare.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "architectures": ["ModernBertModel"]}))
    with caplog.at_level("INFO"):
        model, params = make_model(ModelConfig(name=str(tmp_path)), LABELS, seed=0)
    assert "new classifier for 5 labels" in caplog.text and "new head.dense, head.norm" in caplog.text
    flat = flatten_dict(jax.device_get(params))
    for name, value in bare.state_dict().items():
        *mod, leaf = name.split(".")
        leaf = {"weight": "scale" if mod[-1].endswith("norm") else "embedding" if mod[-1] == "tok_embeddings"
                else "kernel"}.get(leaf, leaf)
        got = flat[("model", *mod, leaf)]
        assert np.array_equal(got.T if leaf == "kernel" else got, value.numpy()), name
    ids, mask = batch()
    hidden = bare(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    ours = Backbone(model.config).apply({"params": params["model"]}, ids, mask,
                                        np.broadcast_to(np.arange(20), ids.shape))
    assert max_diff_on_tokens(ours, hidden.detach().numpy(), mask) <= 1e-5


@pytest.mark.parametrize("bad,match", [
    ({"hidden_activation": "swish"}, "hidden_activation 'swish' is not supported"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}, "rope scaling .*'yarn'"),
    ({"num_attention_heads": 32, "hidden_size": 96}, "head size 3 is odd"),
    ({"layer_types": ["full_attention"]}, "layer_types must list"),
    ({"local_attention": 0}, "local_attention 0 is not a positive whole number"),
    ({"mlp_dropout": 1.0}, r"mlp_dropout 1.0 is not a probability"),
])
def test_config_refuses_what_it_cannot_build(bad, match):
    with pytest.raises(ValueError, match=match):
        ModernBertConfig.from_dict({**TINY, **bad}, "x/config.json")


def test_config_reads_both_transformers_spellings():
    v5 = {**TINY, "layer_types": ["full_attention" if i % 2 == 0 else "sliding_attention" for i in range(5)],
          "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e4},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e3}}}
    c = ModernBertConfig.from_dict(v5)
    assert c.attention_types == tuple(v5["layer_types"]) and (c.global_rope_theta, c.local_rope_theta) == (5e4, 1e3)
    assert ModernBertConfig.from_dict(c.to_dict()) == c
    v4 = ModernBertConfig.from_dict(TINY)
    assert v4.layer_types == () and v4.replace(num_hidden_layers=7).attention_types[6] == "full_attention"


# --- the rest of flaxner with a ModernBERT: long windows, its tokenizer, a run end to end -----------------------


def tiny_base(d, max_positions=2048):
    """A folder with the offline ModernBERT-shaped tokenizer and a tiny ModernBERT config.json fitted to it."""
    from test_bytelevel import modernbert_tokenizer

    from flaxner.models.loading import load_tokenizer

    tok = load_tokenizer(modernbert_tokenizer(d))
    ids = {k: getattr(tok, f"{t}_token_id") for k, t in (("pad_token_id", "pad"), ("cls_token_id", "cls"),
                                                         ("sep_token_id", "sep"), ("bos_token_id", "cls"),
                                                         ("eos_token_id", "sep"))}
    conf = {**TINY, **ids, "vocab_size": len(tok), "max_position_embeddings": max_positions}
    (d / "config.json").write_text(json.dumps(conf))
    return d


def save_tiny_ner(base, out):
    """A random tiny ModernBERT NER folder whose classifier is scaled up (confident, varied entities)."""
    from transformers import AutoTokenizer

    from flaxner.config import ModelConfig
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import make_model

    model, params = make_model(ModelConfig(name=str(base), random_init=True), CONLL_LABELS, seed=0)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 8
    model.save_pretrained(out, params=params)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(out)
    return out


def assert_entities_slice_back(text, entities):
    from flaxner.data.words import split_words

    starts, ends = zip(*split_words(text))
    assert entities
    for e in entities:
        assert e["text"] == text[e["start"]:e["end"]] == e["text"].strip() != ""
        assert e["start"] in starts and e["end"] in ends, e  # whole CoNLL-style words


def test_the_tagger_and_training_take_the_models_positions(tmp_path):
    """max_position_embeddings 2048: data.max_length and tag.max_length may be 2048, one window tags a 1,500
    sub-token line, and 2049 is refused naming the model's positions."""
    from helpers import tag_config

    from flaxner.config import ConfigError, ModelConfig, check_positions
    from flaxner.models.loading import model_positions
    from flaxner.tagging.tagger import Tagger

    from test_bytelevel import TEXTS

    base = tiny_base(tmp_path / "base")
    assert model_positions(ModelConfig(name=str(base), random_init=True)) == 2048
    ner = save_tiny_ner(base, tmp_path / "ner")
    assert model_positions(ModelConfig(name=str(ner))) == 2048
    check_positions("data.max_length", 2048, 2048)
    tagger = Tagger(ner, tag_config(buckets=(64, 2048), max_length=2048, stride=32, batch_tokens=2048,
                                    context="document", words="conll"))
    words = " ".join(TEXTS).split()
    text = " ".join(words[i % len(words)] for i in range(600))
    n = len(tagger.backend.encode(text, add_special_tokens=False).ids)
    assert 1400 <= n <= 2046, n
    entities = tagger.tag(text)
    assert tagger.stats.windows == 1 and tagger.shapes == {(1, 2048)}
    assert_entities_slice_back(text, entities)
    with pytest.raises(ConfigError, match="tag.max_length 2049 is more than the model's max_position_embeddings 2048"):
        Tagger(ner, tag_config(buckets=(64, 2049), max_length=2049, stride=32))


@pytest.mark.slow
def test_train_resume_eval_and_tag_end_to_end(tmp_path, monkeypatch):
    """A tiny ModernBERT with the offline tokenizer: train on CoNLL sentences, interrupt and resume to the same
    run, evaluate, export (PyTorch loads it), tag with offsets that slice back."""
    from helpers import ROOT, assert_same_run, interrupt_at, tag_config
    from transformers import AutoModelForTokenClassification

    from flaxner.config import load_config
    from flaxner.tagging.tagger import Tagger
    from flaxner.training.train import Interrupted, train

    from test_bytelevel import TEXTS

    base = tiny_base(tmp_path / "base")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model.name={base}", "data.limit=24", "train.epochs=2",
                                                       "train.learning_rate=3e-3"])
    ref = train(cfg, tmp_path / "straight")
    assert ref.steps == 6 and ref.history[-1]["loss"] < ref.history[0]["train_loss"]
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(Interrupted, match="at step 2"):
            train(cfg, tmp_path / "resumed")
    summary = train(cfg, tmp_path / "resumed", resume=True)
    assert_same_run(summary, ref, tmp_path / "resumed")
    assert 0 <= summary.history[-1]["f1"] <= 1
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path / "resumed" / "model")).__name__ == \
        "ModernBertForTokenClassification"
    tagger = Tagger(tmp_path / "resumed", tag_config(words="conll"))
    texts = [*TEXTS, "Peter Blackburn lives in Zürich ."]
    for text, entities in zip(texts, tagger.tag(texts), strict=True):
        for e in entities:
            assert e["text"] == text[e["start"]:e["end"]] == e["text"].strip() != ""


def test_masked_lm_checkpoint_keeps_its_head(tmp_path, caplog):
    """The hub's ModernBERT-base/-large are ModernBertForMaskedLM: `head` loads (as transformers' token classifier
    takes it), the decoder is left out, the classifier is new."""
    from safetensors.torch import save_file
    from transformers import ModernBertConfig as HFConfig
    from transformers import ModernBertForMaskedLM

    from flaxner.config import ModelConfig
    from flaxner.models.loading import make_model

    mlm = ModernBertForMaskedLM(HFConfig(**tiny_config(**BIASES).replace(labels=()).to_dict())).eval()
    save_file({k: v.clone().contiguous() for k, v in mlm.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**TINY, **BIASES, "architectures": ["ModernBertForMaskedLM"]}))
    with caplog.at_level("INFO"):
        _, params = make_model(ModelConfig(name=str(tmp_path)), LABELS, seed=0)
    assert "unused: decoder" in caplog.text and "new classifier" in caplog.text and "new head" not in caplog.text
    assert np.array_equal(np.asarray(params["head"]["dense"]["kernel"]).T, mlm.head.dense.weight.detach().numpy())
    assert np.array_equal(np.asarray(params["head"]["norm"]["bias"]), mlm.head.norm.bias.detach().numpy())
