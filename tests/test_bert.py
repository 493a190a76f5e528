"""flaxner's BERT against independent references: PyTorch's BERT / XLM-R on the same weights, and transformers
4's Flax class (the class flaxner trained before) where it is still importable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flaxner.models.bert import BertConfig, FlaxBertForTokenClassification
from flaxner.models.weights import stack_layers, unstack_layers
from flaxner.models.weights import to_pytorch_names
from flaxner.training.step import loss_fn

TINY = "tests/fixtures/tiny-bert/config.json"
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def hf_flax():
    """transformers' Flax BERT (transformers < 5 only)."""
    try:
        from transformers import FlaxBertForTokenClassification as HF
    except ImportError:
        pytest.skip("transformers has no Flax classes (v5+)")
    return HF


def tiny_config(**kw) -> BertConfig:
    return BertConfig.from_json_file(TINY).replace(labels=LABELS, **kw)


def noisy_params(model, seed=1):
    """Fresh params with every leaf perturbed, so that LayerNorm scales and biases are not trivially 1 and 0."""
    p = model.init_params(0)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(p))))
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), p)


def batch(vocab=1000, pad=0, seed=0):
    """[3, 9] ids with right padding of 0, 3 and 6 positions."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, vocab, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    return np.where(mask > 0, ids, pad), mask


def torch_logits(cls, config: BertConfig, params, ids, mask):
    torch = pytest.importorskip("torch")

    ref = cls(cls.config_class(**config.to_dict())).eval()
    state = {k: torch.from_numpy(v) for k, v in to_pytorch_names(params).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        return ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def max_diff_on_tokens(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask > 0].max())


@pytest.mark.parametrize("scan", [pytest.param(True, marks=pytest.mark.slow), False])
def test_logits_equal_pytorch_bert(scan):
    from transformers import BertForTokenClassification

    model = FlaxBertForTokenClassification(tiny_config(), scan_layers=scan)
    params = noisy_params(model)
    ids, mask = batch()
    ours = model(ids, mask, params=params).logits
    assert ours.shape == (3, 9, len(LABELS))
    assert max_diff_on_tokens(ours, torch_logits(BertForTokenClassification, model.config, params, ids, mask),
                              mask) <= 1e-5


def test_logits_equal_pytorch_xlm_roberta():
    from transformers import XLMRobertaForTokenClassification

    conf = tiny_config(model_type="xlm-roberta", pad_token_id=1, type_vocab_size=1, max_position_embeddings=20)
    model = FlaxBertForTokenClassification(conf)
    params = noisy_params(model)
    assert "roberta" in params and "bert" not in params
    ids, mask = batch(pad=1)
    ref = torch_logits(XLMRobertaForTokenClassification, conf, params, ids, mask)
    assert max_diff_on_tokens(model(ids, mask, params=params).logits, ref, mask) <= 1e-5


def test_init_is_berts():
    p = flatten_dict(FlaxBertForTokenClassification(tiny_config(hidden_size=64, intermediate_size=128)).init_params(3))
    for k, v in p.items():
        if k[-1] == "bias":
            assert not np.any(v), k
        elif k[-1] == "scale":
            assert np.all(v == 1), k
        elif k[0] == "classifier":  # lecun_normal, as transformers' Flax class: std 1/sqrt(fan_in)
            assert abs(float(np.std(v)) - 1 / np.sqrt(v.shape[0])) < 0.03, k
        else:
            assert abs(float(np.std(v)) - 0.02) < 0.003 and abs(float(np.mean(v))) < 0.002, k


def test_stack_unstack_round_trip():
    p = noisy_params(FlaxBertForTokenClassification(tiny_config()))
    stacked = stack_layers(p)
    assert stacked["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"].shape == (2, 32, 32)
    back = unstack_layers(stacked)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, p))


@pytest.mark.slow
def test_same_tree_and_logits_as_hf_flax():
    from transformers import BertConfig as HFConfig

    HF = hf_flax()
    hf = HF(HFConfig(**tiny_config().to_dict()), seed=0)
    model = FlaxBertForTokenClassification(tiny_config())
    shapes = lambda t: {k: v.shape for k, v in flatten_dict(t).items()}  # noqa: E731
    assert shapes(model.init_params(0)) == shapes(hf.params)
    params = noisy_params(model)
    ids, mask = batch()
    assert max_diff_on_tokens(model(ids, mask, params=params).logits, hf(ids, mask, params=params).logits,
                              mask) <= 1e-5


@pytest.mark.parametrize("scan", [pytest.param(True, marks=pytest.mark.slow), False])
def test_train_step_loss_and_grads_equal_hf_flax(scan):
    """Loss and gradients of flaxner's loss on one batch. Unrolled layers draw the very dropout masks of the HF
    class (same module paths); the scanned block draws its own, so it is compared without dropout."""
    from transformers import BertConfig as HFConfig

    HF = hf_flax()
    conf = tiny_config() if not scan else tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = HF(HFConfig(**conf.to_dict()), seed=0)
    model = FlaxBertForTokenClassification(conf, scan_layers=scan)
    params = noisy_params(model)
    ids, mask = batch()
    labels = np.where(mask > 0, np.arange(ids.size).reshape(ids.shape) % len(LABELS), -100)
    b = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    rng = jax.random.PRNGKey(7)
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=3)
    (l1, _), g1 = grad(params, b, rng, model.__call__)
    (l2, _), g2 = grad(params, b, rng, hf.__call__)
    assert abs(float(l1) - float(l2)) <= 1e-6
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g1, g2))
    assert max(diffs) <= 1e-6
    assert max(jax.tree.leaves(jax.tree.map(lambda a: float(jnp.abs(a).max()), g1))) > 1e-3  # not all zero


def test_dropout_is_active_only_in_training():
    model = FlaxBertForTokenClassification(tiny_config())
    params = noisy_params(model)
    ids, mask = batch()
    rng = jax.random.PRNGKey(0)
    eval_a = model(ids, mask, params=params).logits
    eval_b = model(ids, mask, params=params, dropout_rng=rng).logits
    train = model(ids, mask, params=params, dropout_rng=rng, train=True).logits
    assert jnp.array_equal(eval_a, eval_b)
    assert float(jnp.abs(train - eval_a).max()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True, False])
def test_remat_gives_the_same_gradients(scan):
    conf = tiny_config()
    params = noisy_params(FlaxBertForTokenClassification(conf))
    ids, mask = batch()
    b = {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask > 0, 1, -100)}
    grads = [jax.grad(lambda p, m=m: loss_fn(p, b, jax.random.PRNGKey(1), m.__call__)[0])(params)
             for m in (FlaxBertForTokenClassification(conf, scan_layers=scan),
                       FlaxBertForTokenClassification(conf, scan_layers=scan, remat=True))]
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), *grads))) <= 1e-6


@pytest.mark.slow
def test_minilm_logits_equal_pytorch():
    torch = pytest.importorskip("torch")
    from transformers import BertForTokenClassification

    from flaxner.config import ModelConfig
    from flaxner.models.loading import make_model, packaged_minilm

    model, params = make_model(ModelConfig(name="minilm"), LABELS, seed=0)
    ref = BertForTokenClassification.from_pretrained(packaged_minilm(), num_labels=len(LABELS)).eval()
    with torch.no_grad():  # the new classifier is random on both sides: give PyTorch ours
        ref.classifier.weight.copy_(torch.from_numpy(np.asarray(params["classifier"]["kernel"]).T.copy()))
        ref.classifier.bias.copy_(torch.from_numpy(np.array(params["classifier"]["bias"])))
    ids, mask = batch(vocab=30522)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert max_diff_on_tokens(model(ids, mask, params=params).logits, want, mask) <= 1e-5
