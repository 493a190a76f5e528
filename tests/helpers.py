"""Helpers the test modules share (fixtures live in conftest.py): the tiny NER model, corpora, JSONL files, the
training-loop interrupter and the same-run check."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny-bert"  # a tiny BERT config + WordPiece vocab
SENTENCES = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn", "BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice to consumers .",
    "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said on Wednesday .",
    "Only France and Britain backed Fischler 's proposal .",
]


def save_tiny_ner(d: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with the fixture vocab and CoNLL labels, saved in HF format into `d`; the
    classifier is scaled up so that predictions are confident and varied (entities to find)."""
    from transformers import AutoTokenizer

    from flaxner.config import ModelConfig
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import make_model

    model, params = make_model(ModelConfig(name=str(FIXTURE), random_init=True), CONLL_LABELS, seed=0,
                               vocab_size=1000)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 8
    model.save_pretrained(d, params=params)
    AutoTokenizer.from_pretrained(str(FIXTURE)).save_pretrained(d)
    return d


def tag_config(**kw):
    """The tagging tests' TagConfig: small buckets and windows, float32, no compile cache, and the tokenizer's words
    (the single-pass reference in test_tagger and HF's pipeline read those; test_words covers the CoNLL-style
    words)."""
    from flaxner.config import TagConfig

    base = dict(buckets=(16, 32, 64, 128), max_length=128, stride=32, batch_tokens=512, lookahead=16,
                compilation_cache="", dtype="float32", words="tokenizer")
    base.update(kw)
    return TagConfig(**base)


def corpus(n: int, seed: int = 0) -> list[str]:
    """`n` texts of 0-90 words drawn from SENTENCES (empty ones included)."""
    rng = random.Random(seed)
    words = " ".join(SENTENCES).split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 8, 20, 45, 90]))) for _ in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


def fixed_batch(vocab: int, batch: int = 8, seq: int = 16, seed: int = 0) -> dict:
    """A random labelled batch with padding after position seq // 2 + 2 and an ignored first token."""
    from flaxner.data.labels import IGNORE

    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int32)
    mask[:, seq // 2 + 2:] = 0
    labels = np.where(mask == 1, rng.integers(0, 9, (batch, seq)), IGNORE).astype(np.int32)
    labels[:, 0] = IGNORE
    return {"input_ids": (rng.integers(5, vocab, (batch, seq)) * mask).astype(np.int32), "attention_mask": mask,
            "labels": labels}


def interrupt_at(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Make the training loop receive `signum` just before it reports `step` (a real signal, handled by train)."""
    import flaxner.training.train as T
    from flaxner.training.train import StepEvent

    real = T.training_steps

    def steps(run, *a):
        for ev in real(run, *a):
            if isinstance(ev, StepEvent) and ev.step == step:
                signal.raise_signal(signum)
            yield ev

    monkeypatch.setattr(T, "training_steps", steps)


def interrupted_then_resumed(cfg, out: Path, monkeypatch, step: int = 4, **resume_train):
    """Train `cfg` into `out` until a SIGTERM at `step`, then resume it (with `resume_train` as train.* overrides);
    the resumed run's summary."""
    from flaxner.config import replace
    from flaxner.training.train import Interrupted, train

    with monkeypatch.context() as m:
        interrupt_at(m, step)
        with pytest.raises(Interrupted, match=f"at step {step}"):
            train(cfg, out)
    return train(replace(cfg, train=resume_train) if resume_train else cfg, out, resume=True)


def assert_same_run(summary, ref, out: Path) -> None:
    """`summary` (run in `out`) reached the uninterrupted `ref` run: history, steps, the card's sample predictions,
    exported weights."""
    import jax

    from flaxner.models.loading import load_trained

    assert summary.steps == ref.steps and summary.samples == ref.samples
    for x, y in zip(summary.history, ref.history, strict=True):
        assert x["step"] == y["step"]
        assert x["f1"] == pytest.approx(y["f1"], abs=1e-9)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    pa = load_trained(out / "model")[1]
    pb = load_trained(Path(ref.run_dir) / "model")[1]
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


# MLflow and W&B for a test (tests/test_trackers.py, the multihost one): a sqlite store and W&B offline, everything
# under one folder, no network.
def tracker_env(store: Path) -> dict[str, str]:
    """The environment a tracked run takes: MLflow's store and W&B's files, logs and cache all under `store`."""
    home = {k: str(store / "wandb-home" / k.lower()) for k in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR",
                                                               "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")}
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
            **home}


def metrics_by_name(run: Path) -> dict[tuple[str, int], list[float]]:
    """(name, step) -> values: every number of every metrics.jsonl row as `<type>/<key>`, and each type's F1 as
    `<type>/f1_<type>`: what a tracker should hold."""
    out: dict[tuple[str, int], list[float]] = {}
    for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()):
        named = {k: v for k, v in r.items()
                 if k not in ("type", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        named.update({f"f1_{t}": s["f1"] for t, s in (r.get("per_type") or {}).items()})
        for k, v in named.items():
            out.setdefault((f"{r['type']}/{k}", r["step"]), []).append(float(v))
    return out


def mlflow_metrics(uri: str, run_id: str) -> tuple[dict[tuple[str, int], list[float]], object]:
    """(name, step) -> values of an MLflow run's metric histories, and the run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    got, run = {}, client.get_run(run_id)
    for key in run.data.metrics:
        for m in client.get_metric_history(run_id, key):
            got.setdefault((key, m.step), []).append(m.value)
    return got, run


def wandb_history(path: Path) -> list[dict]:
    """The history rows of a W&B run file (.wandb: a LevelDB-style log of `Record` protobufs in 32 KiB blocks)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, rows, pos, part = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part, pos = part + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(part)
            part = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def wandb_metrics(run: Path, run_id: str) -> dict[tuple[str, int], list[float]]:
    """(name, step) -> values of the offline W&B run `run_id` in <run>/wandb, every session of it (a resumed run's)."""
    got: dict[tuple[str, int], list[float]] = {}
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert files, f"no offline W&B run {run_id} in {run / 'wandb'}"
    for f in files:
        for row in wandb_history(f):
            for k, v in row.items():
                if not k.startswith("_") and k != "step":
                    got.setdefault((k, row["step"]), []).append(float(v))
    return got


# Small configs of every family (its packing and row tests): vocabulary 100, hidden 32, 2-3 layers.
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=66)
DEBERTA = dict(model_type="deberta-v2", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, relative_attention=True, position_buckets=4,
               max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm",
               position_biased_input=False, type_vocab_size=0, pad_token_id=0)
CONFIGS = {
    "bert": dict(model_type="bert", **SMALL),
    "roberta": dict(model_type="roberta", pad_token_id=1, **SMALL),
    "distilbert": dict(model_type="distilbert", vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                       max_position_embeddings=64),
    "electra": dict(model_type="electra", embedding_size=16, **SMALL),
    "deberta-v3": DEBERTA,
    "deberta-v2-absolute": {**DEBERTA, "position_biased_input": True, "pos_att_type": ["c2p"], "type_vocab_size": 2,
                            "share_att_key": False},
    # 3 layers, one global: a window of +-4 inside segments longer than it
    "modernbert": dict(model_type="modernbert", vocab_size=100, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64, local_attention=8,
                       global_attn_every_n_layers=3, pad_token_id=3, cls_token_id=1, sep_token_id=2),
}


def model_and_params(name: str, **kw):
    """A small random model of a family in CONFIGS and its params, perturbed so that no weight is a round number."""
    import jax

    from flaxner.models.registry import family_of

    conf = json.loads(json.dumps({**CONFIGS[name], **kw, "id2label": dict(enumerate(LABELS))}))
    family = family_of(conf["model_type"])
    model = family.model_class()(family.config_class().from_dict(conf))
    p = model.init_params(0)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(p))))
    return model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), p)
