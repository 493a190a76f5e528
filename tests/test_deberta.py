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


SLOW = pytest.mark.slow


@pytest.mark.parametrize("variant,scan", [("v3", False), ("v3", True), ("v2-c2p", False), ("conv", False),
                                          *[pytest.param(v, s, marks=SLOW) for v, s in (
                                              ("p2c-unbucketed", False), ("conv", True), ("v2-c2p", True),
                                              ("p2c-unbucketed", True))]])
def test_logits_equal_pytorch(variant, scan):
    model = FlaxDebertaV2ForTokenClassification(tiny(variant), scan_layers=scan)
    params = noisy_params(model)
    ids, mask = batch()
    ours = model(ids, mask, params=params).logits
    assert ours.shape == (3, 13, len(LABELS))
    assert max_diff_on_tokens(ours, torch_logits(torch_model(model.config, params), ids, mask), mask) <= 1e-5


@pytest.mark.parametrize("variant", ["v3", pytest.param("conv", marks=SLOW)])
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
    assert abs(float(loss) - out.loss.item()) <= 1e-6
    want = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    ours = to_pytorch_names(grads)
    assert set(ours) == set(want)
    scale = max(float(np.abs(g).max()) for g in want.values())
    assert scale > 1e-3  # not all zero
    assert max(float(np.abs(ours[k] - want[k]).max()) for k in want) <= 1e-5 * scale


@pytest.mark.slow
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


@pytest.mark.slow
def test_bfloat16_logits_stay_close():
    conf = tiny()
    params = noisy_params(FlaxDebertaV2ForTokenClassification(conf))
    ids, mask = batch()
    full = FlaxDebertaV2ForTokenClassification(conf)(ids, mask, params=params).logits
    half = FlaxDebertaV2ForTokenClassification(conf, dtype=jnp.bfloat16)(ids, mask, params=params).logits
    assert half.dtype == jnp.bfloat16
    assert max_diff_on_tokens(half.astype(jnp.float32), full, mask) <= 0.1 * float(jnp.abs(full).max())


@pytest.mark.parametrize("variant", ["v3", pytest.param("conv", marks=SLOW)])
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


def test_config_refusals_name_the_key(tmp_path):
    from flaxner.models.checks import ModelFileError
    from flaxner.models.loading import config_from_file

    (tmp_path / "config.json").write_text(json.dumps({**V3, "position_buckets": 10 ** 9}))
    with pytest.raises(ModelFileError, match="config.json: position_buckets 1000000000 is not a whole number"):
        config_from_file(tmp_path / "config.json")
    for key, value in (("pos_att_type", "p2c|c2c"), ("norm_rel_ebd", "batch_norm"), ("hidden_act", "swish"),
                       ("conv_kernel_size", 4), ("attention_head_size", 16)):
        with pytest.raises(ValueError, match=f"config.json: {key} "):
            DebertaV2Config.from_dict({**V3, key: value})
    conf = DebertaV2Config.from_dict(V3)
    assert conf.max_relative_positions == 64 and conf.span == 4  # -1 resolves to max_position_embeddings


@pytest.mark.slow
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


# --- the SentencePiece tokenizer: word alignment, tag offsets, an end-to-end run -------------------------------

TEXTS = ["EU rejects German call to boycott British lamb.", 'Peter Blackburn (BRUSSELS) said: "no!"',
         "Zürich's Café São Paulo,Peter Blackburn.", "  Mr. Blackburn  met\tthe EU-envoy in São Paulo  "]
PIECES = ["▁EU", "▁German", "▁Black", "burn", "▁Peter", "▁Caf", "▁Paul", "▁the"]


def deberta_v3_tokenizer(folder):
    """A tiny DeBERTa-v3-like fast tokenizer saved in `folder`: a Unigram model with `▁` word starts and DeBERTa-v3's
    ids ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK] last), the normalizer and Metaspace pre-tokenizer of
    transformers' DebertaV2Tokenizer. Every printable ASCII character is a piece (with and without `▁`), a few
    whole words and sub-words score higher, `é` and `ã` are pieces and `ü` is not (an [UNK])."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if not c.isspace()] + ["é", "ã"]
    vocab = ([("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0), ("▁", -3.0)]
             + [(p, -2.0) for p in PIECES] + [(c, -5.0) for c in chars] + [("▁" + c, -5.5) for c in chars]
             + [("[MASK]", 0.0)])
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                                           normalizers.Strip(left=False, right=True)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]", mask_token="[MASK]")
    fast.save_pretrained(str(folder))
    return fast


def deberta_folder(folder, seed=0, boost=1.0, spm=False, **conf):
    """An HF folder of a random tiny DeBERTa-v3 NER model (CoNLL labels) with the tokenizer above (`spm`: the
    hub's spm.model form, `spm_folder`); `boost` scales the classifier so that predictions are confident and varied
    (entities to find)."""
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if spm:
        spm_folder(folder)
    tok = load_tokenizer(folder) if spm else deberta_v3_tokenizer(folder)
    config = DebertaV2Config.from_dict({**V3, "vocab_size": len(tok), "max_position_embeddings": 512, **conf,
                                        "id2label": dict(enumerate(CONLL_LABELS))})
    model = FlaxDebertaV2ForTokenClassification(config)
    params = model.init_params(seed)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * boost
    model.save_pretrained(folder, params=params)
    return folder


def test_words_align_to_their_sub_tokens(tmp_path):
    """Training rows: every word's label sits on its first sub-token, and a word's sub-tokens are what the
    tokenizer makes of the word alone (punctuation without a space before it, non-ASCII, an unknown character)."""
    from flaxner.config import DataConfig
    from flaxner.data.splits import encode
    from flaxner.data.words import words_of

    tok = deberta_v3_tokenizer(tmp_path)
    sentences = [words_of(t) for t in TEXTS]
    tags = [[i % 9 for i in range(len(s))] for s in sentences]
    enc = encode({"tokens": sentences, "ner_tags": tags}, tok, DataConfig(max_length=128))
    assert len(enc.input_ids) == len(sentences)
    for words, want, ids, labels, starts in zip(sentences, tags, enc.input_ids, enc.labels, enc.word_index):
        assert ids[0] == 1 and ids[-1] == 2  # [CLS] ... [SEP]
        first = np.flatnonzero(starts >= 0)
        assert starts[first].tolist() == list(range(len(words)))
        assert labels[first].tolist() == want and np.all(np.delete(labels, first) == -100)
        bounds = [*first, len(ids) - 1]
        for w, a, b in zip(words, bounds[:-1], bounds[1:]):
            assert ids[a:b].tolist() == tok(w, add_special_tokens=False)["input_ids"], w
    assert any(3 in ids for ids in enc.input_ids)  # the unknown ü
    assert any(tok.convert_ids_to_tokens(int(i)) == "burn" for ids in enc.input_ids for i in ids)  # a sub-word


@pytest.mark.parametrize("words,spm", [("conll", False), ("tokenizer", False), pytest.param("conll", True, marks=SLOW)])
def test_tag_offsets_slice_back_to_the_entity_text(tmp_path, words, spm):
    from flaxner.data.words import split_words
    from flaxner.tagging.tagger import Tagger
    from helpers import tag_config

    if spm:
        pytest.importorskip("sentencepiece")
    tagger = Tagger.from_pretrained(deberta_folder(tmp_path, boost=40.0, spm=spm), tag_config(words=words))
    found = tagger.tag(TEXTS)
    assert sum(len(e) for e in found) >= 4
    for text, ents in zip(TEXTS, found):
        starts = {a for a, _ in split_words(text)} if words == "conll" else None
        for e in ents:
            assert e["text"] == text[e["start"]:e["end"]] and e["text"] == e["text"].strip(), (text, e)
            if starts is not None:
                assert e["start"] in starts, (text, e)


@pytest.mark.slow
def test_train_resume_eval_tag_end_to_end(tmp_path, monkeypatch, compile_cache):
    """A random tiny DeBERTa-v3 with the offline tokenizer: trains (interrupted, then resumed to the same end),
    evaluates, exports an HF folder PyTorch loads, and tags with offsets that slice back."""
    from transformers import AutoModelForTokenClassification

    from flaxner.config import load_config
    from flaxner.tagging.tagger import Tagger
    from flaxner.training.evaluate import predict_split
    from flaxner.training.train import Interrupted, train
    from helpers import ROOT, interrupt_at, tag_config

    base = deberta_folder(tmp_path / "base")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model.name={base}", "data.limit=24", "train.epochs=2",
                                                        f"train.compilation_cache={compile_cache}"])
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(Interrupted, match="at step 3"):
            train(cfg, out)
    summary = train(cfg, out, resume=True)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["type"] == "train"]
    assert steps == sorted(set(steps)) and max(steps) == 6
    assert summary.steps == 6 and (out / "model" / "model.safetensors").is_file()
    pred = predict_split(out, "validation", limit=20)
    assert len(pred.pred) == 20 and [len(p) for p in pred.pred] == [len(t) for t in pred.tokens]
    assert 0 <= pred.metrics["f1"] <= 1 and np.isfinite(pred.metrics["loss"])
    ref = AutoModelForTokenClassification.from_pretrained(str(out / "model"))
    assert type(ref).__name__ == "DebertaV2ForTokenClassification"
    tagger = Tagger.from_pretrained(out, tag_config())
    for text, ents in zip(TEXTS, tagger.tag(TEXTS)):
        assert all(e["text"] == text[e["start"]:e["end"]] for e in ents)


def spm_folder(folder):
    """A hub-like DeBERTa-v3 folder: config.json, spm.model (trained here on CoNLL sentences with DeBERTa-v3's
    special ids) and tokenizer_config.json as microsoft/deberta-v3-base ships it; no tokenizer.json. Returns the
    SentencePiece processor (needs sentencepiece)."""
    import io

    import sentencepiece as spm

    from flaxner.data.readers import read_file
    from helpers import ROOT

    corpus = [" ".join(w) for w in read_file(ROOT / "tests" / "fixtures" / "snippet.txt").tokens] + TEXTS
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus * 20), model_writer=proto, vocab_size=120,
                                   model_type="unigram", hard_vocab_limit=False, character_coverage=1.0,
                                   pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2,
                                   eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]", minloglevel=2)
    (folder / "spm.model").write_bytes(proto.getvalue())
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false, "vocab_type": "spm"}')
    (folder / "config.json").write_text(json.dumps({**V3, "vocab_size": 128}))
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


def test_spm_model_folder_gives_the_fast_tokenizer(tmp_path):
    """What `model.name=microsoft/deberta-v3-base` downloads: transformers converts spm.model to the fast
    tokenizer (with sentencepiece installed), whose ids are SentencePiece's own."""
    pytest.importorskip("sentencepiece")
    from flaxner.models.loading import load_tokenizer

    sp = spm_folder(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.is_fast and (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 0, 3)
    for text in TEXTS[:3]:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
    enc = tok([["Peter", "Blackburn", "(", "BRUSSELS", ")", "said", ":"]], is_split_into_words=True)
    assert enc.word_ids(0)[0] is None and enc.word_ids(0)[-2] == 6


def test_spm_model_without_sentencepiece_is_one_line(tmp_path, monkeypatch):
    import sys

    from flaxner.models.checks import ModelFileError
    from flaxner.models.loading import load_tokenizer

    (tmp_path / "spm.model").write_bytes(b"\x00")
    (tmp_path / "config.json").write_text(json.dumps(V3))
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails
    with pytest.raises(ModelFileError, match=r"spm.model without tokenizer.json needs sentencepiece .*"
                                             r"pip install 'flaxner\[deberta\]'$"):
        load_tokenizer(tmp_path)
