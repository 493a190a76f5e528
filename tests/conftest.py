"""Shared fixtures: the tiny config, a tiny random BERT, the tiny NER model folder, the CoNLL snippet, and one tiny
trained run. Shared helpers (not fixtures) are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
    """One persistent XLA cache for the session, so each shape compiles once across tests."""
    return str(tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="session")
def tiny_cfg(compile_cache):
    from flaxner.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml", [f"train.compilation_cache={compile_cache}"])


@pytest.fixture(scope="session")
def snippet() -> Path:
    """Seven CoNLL-2003 sentences (with a -DOCSTART- line) in the shipped column format."""
    return FIXTURES / "snippet.txt"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_cfg):
    from flaxner.models.loading import make_tokenizer

    return make_tokenizer(tiny_cfg.model)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg, tiny_tokenizer):
    """(model, params) of a random 2-layer BERT, hidden 32, with the fixture vocab."""
    from flaxner.models.loading import make_model

    return make_model(tiny_cfg.model, seed=0, vocab_size=len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tmp_path_factory) -> dict:
    """One finished tiny training run (2 epochs on 48 sentences): its summary, with run_dir."""
    from flaxner.training.train import train

    return train(tiny_cfg, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory) -> Path:
    """An HF-format folder of a random tiny BERT NER model with confident, varied predictions (the tagging tests'
    model): helpers.save_tiny_ner."""
    from helpers import save_tiny_ner

    return save_tiny_ner(tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="module")
def tagger(tiny_ner_dir):
    """A Tagger over tiny_ner_dir with helpers.tag_config (one per test module)."""
    from flaxner.tagging.tagger import Tagger
    from helpers import tag_config

    return Tagger.from_pretrained(tiny_ner_dir, tag_config())


@pytest.fixture
def compile_event_names():
    """A function: the `fun_name`s JAX's compile events report (tracing, lowering, backend compile) while
    `fn.lower(*args).compile()` runs, as (event kind, name) pairs: what the benchmarks' compile counters match."""
    import jax.monitoring

    def names(fn, *args) -> set[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()

        def listen(event: str, duration: float, **kw) -> None:
            if event.startswith("/jax/core/compile/"):
                seen.add((event.rsplit("/", 1)[-1], str(kw.get("fun_name"))))

        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            fn.lower(*args).compile()
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        return seen

    return names
