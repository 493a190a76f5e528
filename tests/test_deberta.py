"""flaxner's DeBERTa-v2/v3 against transformers' PyTorch DebertaV2 classes on the same random weights, its weights
files both ways, and a SentencePiece (Unigram, `▁` words) tokenizer built offline through flaxner's word alignment
and tag offsets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flaxner.config import ModelConfig
from flaxner.models.deberta import DebertaV2Config, FlaxDebertaV2ForTokenClassification
from flaxner.models.deberta_layers import relative_positions
from flaxner.models.weights import to_pytorch_names
from flaxner.training.step import loss_fn

torch = pytest.importorskip("torch")

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# deberta-v3-base's shape options at a tiny size; rows of 13 tokens against 4 position buckets (span 4: relative
# distances past 2 are log-bucketed, past 8 clamped), so every branch of the bucketing is exercised.
V3 = dict(model_type="deberta-v2", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
          intermediate_size=37, max_position_embeddings=64, relative_attention=True, position_buckets=4,
          max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm",
          position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, hidden_act="gelu", pad_token_id=0)
VARIANTS = {
    "v3": {},
    # deberta-v2 style: own position projections, c2p only, absolute positions and token types, no table norm
    "v2-c2p": dict(share_att_key=False, pos_att_type=["c2p"], norm_rel_ebd="none", position_biased_input=True,
                   type_vocab_size=2),
    "p2c-unbucketed": dict(share_att_key=False, pos_att_type="p2c", position_buckets=-1, max_relative_positions=6),
    # deberta-v2-xlarge's conv beside layer 0 (grouped), and an embedding narrower than the hidden size
    "conv": dict(conv_kernel_size=3, conv_act="gelu", conv_groups=2, embedding_size=24),
}


def tiny(variant="v3", **kw) -> DebertaV2Config:
    d = {**V3, **VARIANTS[variant], **kw, "id2label": dict(enumerate(LABELS))}
    return DebertaV2Config.from_dict(json.loads(json.dumps(d)))


def noisy_params(model, seed=1):
    """Fresh params with every leaf perturbed (LayerNorm scales and biases not trivially 1 and 0)."""
    p = model.init_params(0)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(p))))
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), p)


def batch(seed=0, vocab=100):
    """[3, 13] ids with right padding of 0, 4 and 9 positions."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, vocab, (3, 13))
    mask = np.ones_like(ids)
    mask[1, 9:], mask[2, 4:] = 0, 0
    return np.where(mask > 0, ids, 0), mask


def torch_model(config: DebertaV2Config, params):
    from transformers import DebertaV2Config as HFConfig
    from transformers import DebertaV2ForTokenClassification

    ref = DebertaV2ForTokenClassification(HFConfig(**config.to_dict()))
    state = {k: torch.from_numpy(v.copy()) for k, v in to_pytorch_names(params).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return ref


def torch_logits(ref, ids, mask):
    with torch.no_grad():
        return ref.eval()(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def max_diff_on_tokens(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask > 0].max())


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (4, 8), (6, 40), (32, 128)])
def test_relative_buckets_equal_transformers(buckets, max_position):
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    n = 1100
    x = torch.zeros(1, n, 1)
    want = build_relative_position(x, x, bucket_size=buckets, max_position=max_position)[0].numpy()
    ours = relative_positions(n, buckets, max_position)
    assert np.array_equal(ours, want)
    assert len(np.unique(ours)) > buckets // 2  # the log buckets are reached


@pytest.mark.parametrize("variant,scan", [("v3", False), ("v3", True), ("v2-c2p", False), ("p2c-unbucketed", False),
                                          ("conv", False), ("conv", True),
                                          pytest.param("v2-c2p", True, marks=pytest.mark.slow),
                                          pytest.param("p2c-unbucketed", True, marks=pytest.mark.slow)])
def test_logits_equal_pytorch(variant, scan):
    model = FlaxDebertaV2ForTokenClassification(tiny(variant), scan_layers=scan)
    params = noisy_params(model)
    ids, mask = batch()
    ours = model(ids, mask, params=params).logits
    assert ours.shape == (3, 13, len(LABELS))
    assert max_diff_on_tokens(ours, torch_logits(torch_model(model.config, params), ids, mask), mask) <= 1e-5


@pytest.mark.parametrize("variant", ["v3", "conv"])
def test_train_step_loss_and_grads_equal_pytorch(variant):
    """flaxner's loss (mean cross-entropy over labelled tokens) and its gradients against PyTorch's
    CrossEntropyLoss backward on the same batch; dropout off (the two draw different masks)."""
    conf = tiny(variant, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = FlaxDebertaV2ForTokenClassification(conf)
    params = noisy_params(model)
    ids, mask = batch()
    labels = np.where(mask > 0, np.arange(ids.size).reshape(ids.shape) % len(LABELS), -100)
    b = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, b, jax.random.PRNGKey(0), model.__call__)

    ref = torch_model(conf, params).train()
    out = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
    out.loss.backward()
    assert abs(float(loss) - float(out.loss)) <= 1e-6
    want = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    ours = to_pytorch_names(grads)
    assert set(ours) == set(want)
    scale = max(float(np.abs(g).max()) for g in want.values())
    assert scale > 1e-3  # not all zero
    assert max(float(np.abs(ours[k] - want[k]).max()) for k in want) <= 1e-5 * scale


def test_dropout_is_active_only_in_training():
    model = FlaxDebertaV2ForTokenClassification(tiny())
    params = noisy_params(model)
    ids, mask = batch()
    rng = jax.random.PRNGKey(0)
    eval_a = model(ids, mask, params=params).logits
    assert jnp.array_equal(eval_a, model(ids, mask, params=params, dropout_rng=rng).logits)
    assert float(jnp.abs(model(ids, mask, params=params, dropout_rng=rng, train=True).logits - eval_a).max()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("variant,scan", [("v3", True), ("conv", True), ("v3", False)])
def test_remat_gives_the_same_gradients(variant, scan):
    conf = tiny(variant)
    params = noisy_params(FlaxDebertaV2ForTokenClassification(conf))
    ids, mask = batch()
    b = {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask > 0, 1, -100)}
    grads = [jax.grad(lambda p, m=m: loss_fn(p, b, jax.random.PRNGKey(1), m.__call__)[0])(params)
             for m in (FlaxDebertaV2ForTokenClassification(conf, scan_layers=scan),
                       FlaxDebertaV2ForTokenClassification(conf, scan_layers=scan, remat=True))]
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), *grads))) <= 1e-6


def test_bfloat16_logits_stay_close():
    conf = tiny()
    params = noisy_params(FlaxDebertaV2ForTokenClassification(conf))
    ids, mask = batch()
    full = FlaxDebertaV2ForTokenClassification(conf)(ids, mask, params=params).logits
    half = FlaxDebertaV2ForTokenClassification(conf, dtype=jnp.bfloat16)(ids, mask, params=params).logits
    assert half.dtype == jnp.bfloat16
    assert max_diff_on_tokens(half.astype(jnp.float32), full, mask) <= 0.1 * float(jnp.abs(full).max())


@pytest.mark.parametrize("variant", ["v3", "conv"])
def test_save_pretrained_loads_in_transformers_and_back(tmp_path, variant):
    from transformers import AutoModelForTokenClassification

    from flaxner.models.loading import load_params, read_config

    model = FlaxDebertaV2ForTokenClassification(tiny(variant))
    params = noisy_params(model)
    model.save_pretrained(tmp_path, params=params)
    ref = AutoModelForTokenClassification.from_pretrained(str(tmp_path))
    assert type(ref).__name__ == "DebertaV2ForTokenClassification"
    assert ref.config.id2label == dict(enumerate(LABELS))
    ids, mask = batch()
    assert max_diff_on_tokens(model(ids, mask, params=params).logits, torch_logits(ref, ids, mask), mask) <= 1e-5
    assert read_config(tmp_path) == model.config
    back = load_params(tmp_path, model, checkpoint_labels=LABELS)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, params))


@pytest.mark.parametrize("cls", ["DebertaV2Model", "DebertaV2ForMaskedLM"])
def test_pretrained_checkpoint_loads_with_a_fresh_classifier(tmp_path, cls):
    """A bare encoder (names without `deberta.`) and a masked-LM checkpoint (the hub's deberta-v3 weights: an LM
    head to leave out) load into flaxner with a new classifier; the encoder's logits then equal PyTorch's."""
    import transformers

    from flaxner.models.loading import make_model

    conf = tiny("conv")
    hf_conf = transformers.DebertaV2Config(**{k: v for k, v in conf.to_dict().items()
                                              if k not in ("id2label", "label2id", "architectures")})
    torch.manual_seed(0)
    getattr(transformers, cls)(hf_conf).save_pretrained(str(tmp_path))
    model, params = make_model(ModelConfig(name=str(tmp_path)), LABELS, seed=3)
    assert model.config.labels == LABELS and params["classifier"]["kernel"].shape == (32, len(LABELS))
    ref = torch_model(model.config, params)  # our tree, classifier included, into PyTorch ...
    theirs = transformers.AutoModel.from_pretrained(str(tmp_path)).state_dict()  # the checkpoint's own encoder
    for k, v in ref.deberta.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    ids, mask = batch()
    assert max_diff_on_tokens(model(ids, mask, params=params).logits, torch_logits(ref, ids, mask), mask) <= 1e-5


def test_config_refusals_name_the_key():
    for key, value in (("pos_att_type", "p2c|c2c"), ("norm_rel_ebd", "batch_norm"), ("hidden_act", "swish"),
                       ("conv_kernel_size", 4), ("attention_head_size", 16)):
        with pytest.raises(ValueError, match=f"config.json: {key} "):
            DebertaV2Config.from_dict({**V3, key: value})
    conf = DebertaV2Config.from_dict(V3)
    assert conf.max_relative_positions == 64 and conf.span == 4  # -1 resolves to max_position_embeddings


def test_init_is_normal_with_zero_biases_and_unit_norms():
    p = flatten_dict(FlaxDebertaV2ForTokenClassification(tiny(hidden_size=64, intermediate_size=128)).init_params(3))
    assert ("deberta", "encoder", "rel_embeddings", "embedding") in p and ("deberta", "encoder", "LayerNorm", "scale") in p
    for k, v in p.items():
        if k[-1] == "bias":
            assert not np.any(v), k
        elif k[-1] == "scale":
            assert np.all(v == 1), k
        elif k[0] != "classifier":
            assert abs(float(np.std(v)) - 0.02) < 0.004, k
