"""Smoke runs of the benchmark scripts at tiny sizes on CPU, each as `python -m bench.<name>` from the repository
root: they run end to end and write sane JSON. No timing assertions: benchmarks are scripts, these only keep them
working."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


def run(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_train_speed_tiny(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "train_speed.json"
    proc = run("train_speed", "--model", "tiny", "--in-process", "--repeats", "2", "--warmup", "1",
               "--draw", "sentences", "--json", str(out))
    assert "a/b =" in proc.stdout and "# versions:" in proc.stdout
    res = json.loads(out.read_text())
    assert res["machine"]["cores"] >= 1 and res["versions"]["jax"]
    c = res["contenders"]
    assert set(c) == {"a", "b", "c"}
    for r in c.values():
        assert len(r["pass_s"]) == 2 and r["s_per_step"] > 0
        assert r["sentences"] == 3 * 16 and 0 < r["real_tokens"] < r["padded_tokens"]
        assert 0 <= r["padding"] < 1 and 0 <= r["epoch_padding"] < 1
        assert r["real_tok_s"] > 0 and r["padded_tok_s"] > r["real_tok_s"] and r["peak_rss_mib"] > 0
        assert r["last_loss"] == r["last_loss"]  # not NaN
    # every contender saw the same sentences
    assert c["a"]["real_tokens"] == c["b"]["real_tokens"] == c["c"]["real_tokens"]
    # flaxner compiles its gradients once per bucket shape and its update once, during warm-up, and never while
    # timed; PyTorch compiles nothing
    assert c["a"]["compile_count"] == len(c["a"]["shapes"]) + 1 >= 2 and c["a"]["recompiles_in_passes"] == 0
    assert c["b"]["compile_count"] == c["c"]["compile_count"] == 0
    # the PyTorch contenders run where the Trainer would: the GPU if there is one, else the CPU
    import torch

    assert c["b"]["torch_device"] == c["c"]["torch_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # grouping by length pads less than random batches on the same sentences
    assert c["c"]["padding"] <= c["b"]["padding"]
    assert res["ratios"]["a/b"] == pytest.approx(c["a"]["real_tok_s"] / c["b"]["real_tok_s"])
    assert set(res["ratios"]) == {"a/b", "a/c"}


def test_train_speed_draws_from_each_epoch(tmp_path):
    """The default draw: each contender times full batches of its own epoch (flaxner's in its fitted lengths)."""
    pytest.importorskip("torch")
    out = tmp_path / "train_speed.json"
    proc = run("train_speed", "--model", "tiny", "--in-process", "--repeats", "1", "--warmup", "1", "--only", "ab",
               "--steps", "4", "--json", str(out))
    assert "drawn from each contender's epoch" in proc.stdout
    c = json.loads(out.read_text())["contenders"]
    for r in c.values():
        assert r["draw"] == "epoch" and r["sentences"] == 4 * 16 and 0 < r["real_tokens"] < r["padded_tokens"]
    assert set(c["a"]["shapes"]) <= set(c["a"]["buckets"])


def test_train_speed_bf16_tiny(tmp_path):
    """The matched bfloat16 comparison: flaxner's model.dtype=mixed against the Trainer's bf16 autocast."""
    pytest.importorskip("torch")
    out = tmp_path / "train_speed.json"
    run("train_speed", "--model", "tiny", "--in-process", "--repeats", "1", "--warmup", "1", "--only", "ab",
        "--torch-bf16", "--json", str(out), "model.dtype=mixed")
    res = json.loads(out.read_text())
    assert res["torch_bf16"] is True and res["overrides"] == ["model.dtype=mixed"]
    c = res["contenders"]
    assert c["a"]["label"].endswith("model.dtype mixed") and c["b"]["label"].endswith("bf16 autocast")
    assert all(r["real_tok_s"] > 0 and r["last_loss"] == r["last_loss"] for r in c.values())


def test_step_shapes_tiny(tmp_path):
    """Both contenders step in turns at each fixed length, every position real; the ratio is that of the medians.
    Both in bf16 (PyTorch's forward under autocast, flaxner's `model.dtype=mixed`), the matched comparison."""
    pytest.importorskip("torch")
    out = tmp_path / "step_shapes.json"
    proc = run("step_shapes", "--model", "tiny", "--lengths", "8,16", "--repeats", "2", "--warmup", "1",
               "--json", str(out), "--torch-bf16", "model.dtype=mixed")
    assert "| L |" in proc.stdout and "# versions:" in proc.stdout and "under bf16 autocast" in proc.stdout
    res = json.loads(out.read_text())
    assert res["torch_bf16"] is True and res["overrides"] == ["model.dtype=mixed"]
    rows = res["rows"]
    assert [r["length"] for r in rows] == [8, 16]
    for r in rows:
        assert len(r["a_s"]) == len(r["b_s"]) == 2 and min(r["a_s"] + r["b_s"]) > 0
        assert r["a_pos_s"] == pytest.approx(16 * r["length"] / r["a_median_s"])
        assert r["a_over_b"] == pytest.approx(r["a_pos_s"] / r["b_pos_s"])


def test_step_shapes_cuts_the_same_rows_for_both_contenders():
    import numpy as np

    from bench.step_shapes import cut, rows_of_length

    lengths = np.array([3, 9, 5, 12, 7])
    assert rows_of_length(lengths, 6, 2).tolist() == [4, 1]  # the shortest rows of 6 or more
    assert rows_of_length(lengths, 10, 2).tolist() == [1, 3]  # too few that long: the longest
    ids = [np.arange(n) + 1 for n in lengths]
    b = cut(ids, [np.zeros(n, int) for n in lengths], np.array([0, 3]), 6, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0, 0, 0], [1, 2, 3, 4, 5, 6]]
    assert b["attention_mask"].sum(1).tolist() == [3, 6] and b["labels"][0].tolist() == [0, 0, 0, -100, -100, -100]


def test_gpu_bench_tiny(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gb"
    proc = run("gpu_bench", str(out), "--size", "tiny", "--in-process", "--dtypes", "float32",
               "--limit", "16", "--tag-lines", "100", "--hf-lines", "16", "--work", str(tmp_path / "work"),
               "--compile-workers", "2")  # as on a GPU host, where the auto setting compiles ahead
    assert "goals:" in proc.stdout
    res = json.loads((out / "gpu_bench.json").read_text())
    assert res["args"]["size"] == "tiny" and "machine" in res and "command" in res
    parts = res["parts"]
    tr = parts["train_float32"]
    assert len(tr["epochs"]) == 1 and tr["epochs"][0]["steps"] == tr["steps_per_epoch"] == 2
    assert tr["compile_count"] >= 3 and tr["compile_s"] > 0  # the update, a train and an eval shape at least
    assert tr["compile_workers"] == 2 and sum(e["ahead_compiles"] for e in tr["epochs"]) >= 1
    assert tr["step_s"] > 0 and tr["real_tok_s"] > 0 and 0 <= tr["padding"] < 1
    assert tr["pack_length"] == 128  # the train parts pack each batch's sentences (issue 25)
    assert tr["bf16_matmul_flop_s"] > 0 and 0 < tr["mfu"] < 1
    assert 0 <= tr["final_f1"] <= 1 and tr["recipe_wall_s"] >= tr["load_s"]
    assert (tmp_path / "work" / "model" / "config.json").is_file()
    hf = parts["hf"]
    assert "error" not in hf and hf["lines"] == 16 and hf["tokens"] > 0 and hf["tok_s"] > 0
    tag = parts["tag"]
    if importlib.util.find_spec("flaxner.tagging.tagger") is None:
        assert "flaxner.tagging.tagger unavailable" in tag["error"]
    else:
        assert "error" not in tag, tag
        assert tag["lines"] == 100 and tag["tokens"] > 0 and tag["tok_s"] > 0 and tag["long_docs"] >= 1
        assert tag["compiles_in_runs"] == 0
        assert "tagger_over_hf_pipeline" in res["goals"]
    assert "tagging_at_least_1M_tok_s" in res["goals"] or "error" in tag
    sharded = parts["tag_sharded"]  # the same corpus in 2 processes, one shard each: every line tagged once
    assert "error" not in sharded, sharded
    assert sharded["processes"] == 2 and sharded["lines"] == 100 and sharded["tokens"] == tag["tokens"]
    assert "tagging_sharded_at_least_1M_tok_s" in res["goals"]
    outs = [json.loads(x) for k in range(2)
            for x in (tmp_path / "work" / "sharded" / f"tagged{k}.jsonl").read_text().splitlines()]
    assert [o["id"] for o in outs] == list(range(100))


def test_tag_host_tiny(tmp_path):
    out = tmp_path / "tag_host.json"
    proc = run("tag_host", "--lines", "300", "--processes", "1,2", "--repeats", "1", "--json", str(out))
    assert "2 process(es):" in proc.stdout
    res = json.loads(out.read_text())
    one, two = res["by_processes"]["1"], res["by_processes"]["2"]
    assert one["lines"] == two["lines"] == 300 and one["tokens"] == two["tokens"] > 300
    assert one["entities"] == two["entities"] > 0 and one["tok_s"] > 0 and two["tok_s"] > 0


def test_sharded_tagging_reports_a_failed_child_instead_of_raising(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(REPO)  # its children run `python -m bench.tag_host`
    from bench.tag_host import run_sharded

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": 1, "text": "Paris"}\n')
    out = run_sharded(str(tmp_path / "no-model"), corpus, 2, tmp_path / "w", stand_in=True, batch_tokens=0,
                      timeout=120)
    assert out["processes"] == 2 and "failed" in out["error"] and "tok_s" not in out


def test_hf_reference_takes_the_labels_of_relabelled_data(tmp_path):
    """bench.relabel_conll's LOC -> PLACE + NUM variant through the HF Trainer reference: the classifier and the
    scores use the data's 11 labels, as `flaxner train` would."""
    pytest.importorskip("torch")
    data = tmp_path / "place-num"
    proc = run("relabel_conll", str(data), "--rename", "LOC=PLACE", "--numbers", "NUM")
    assert "'NUM':" in proc.stdout and "'LOC'" not in proc.stdout
    out = tmp_path / "hf.json"
    run("hf_trainer_reference", "--config", "configs/tiny.yaml", "--save", "no", "--json", str(out),
        f"data.source={data}", "train.epochs=1", "train.eval_test=true")
    res = json.loads(out.read_text())
    assert res["labels"] == ["O", *(f"{p}-{t}" for t in ("MISC", "NUM", "ORG", "PER", "PLACE") for p in "BI")]
    assert len(res["history"]) == 1 and 0 <= res["test"]["f1"] <= 1


def test_tag_vs_eval_documents_tiny(tiny_run, tmp_path):
    out = tmp_path / "tag_vs_eval.json"
    run("tag_vs_eval", "--model", str(tiny_run["run_dir"]), "--documents", "--no-hf", "--splits", "test",
        "--limit", "40", "--json", str(out))
    res = json.loads(out.read_text())["splits"]["test"]
    assert res["sentences"] == 40 and res["documents"] >= 2
    for key in ("tag_none_spaces", "tag_none_running", "tag_document_spaces", "tag_document_running",
                "tag_none_lines", "tag_document_lines"):
        assert 0.0 <= res[key] <= 1.0, key


def test_tag_speed_onnx_tiny(tmp_path):
    """bench.tag_speed's contenders on the tiny model and CoNLL-2003 test lines, ONNX Runtime first (the order is
    the one asked for): a ratio to flaxner and an F1 on the gold words for each."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "tag_speed.json"
    order = ["onnx", "flaxner", "torch", "onnx-int8"]
    proc = run("tag_speed", "--model", "tiny", "--corpus", "test", "--lines", "12", "--repeats", "1", "--scale", "1",
               "--contenders", ",".join(order), "--json", str(out))
    assert "| ONNX Runtime fp32, sorted loop, batch 32 |" in proc.stdout and "flaxner ×" in proc.stdout
    res = json.loads(out.read_text())
    assert res["corpus"] == "test" and res["lines"] == 12 and res["tokens"] > 12 and res["over_512"] == 0
    assert list(res["results"]) == order
    assert res["onnx_export"]["fp32_mib"] > 0 and res["onnx_export"]["int8_mib"] > 0
    assert res["onnx_export"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    for c, r in res["results"].items():
        assert r["error"] is None, (c, r["error"])
        assert r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["peak_rss_mib_large"] > 0
        assert 0.0 <= r["f1"] <= 1.0, c
        assert (r["flaxner_x"] is None) == (c == "flaxner")
        assert c == "flaxner" or r["flaxner_x"] == pytest.approx(res["results"]["flaxner"]["tokens_per_s"]
                                                                  / r["tokens_per_s"])
    assert res["results"]["flaxner"]["compiles"] >= 1


def test_first_subtoken_tags_label_each_word_by_its_first_subtoken(monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(REPO))

    from bench.tag_loops import first_subtoken_tags

    names = ["O", "B-PER", "I-PER"]
    # "[CLS] Jo ##hn Smith [SEP]" over "John Smith" truncated before the third word "went"
    offsets = np.array([[0, 0], [0, 2], [2, 4], [5, 10], [0, 0]])
    labels = np.array([0, 1, 0, 2, 0])
    assert first_subtoken_tags(labels, offsets, [(0, 4), (5, 10), (11, 15)], names) == ["B-PER", "I-PER", "O"]


def test_startup_tiny(tmp_path):
    """bench.startup on the old tiny run (HOME in tmp_path: its caches are fresh ones there)."""
    import os

    out = tmp_path / "startup.json"
    proc = subprocess.run([sys.executable, "-m", "bench.startup", "--model", "tests/fixtures/old-run-tiny",
                           "--repeats", "2", "--breakdown", "--work", str(tmp_path / "work"), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res["wall_s"]) == len(res["cpu_s"]) == 2 and res["wall_median_s"] > 0 and res["output"]
    b = res["breakdown"]
    assert b["rc"] == 0 and "transformers" not in b["heavy"] and b["imports"]["jax"] > 0
    assert b["events"]["cache_hits"][0] == 1 and "cache_misses" not in b["events"]


def test_matmul_dtypes_tiny():
    """bench.matmul_dtypes on the tiny BERT: every product and pass is timed (the figures mean nothing here)."""
    proc = run("matmul_dtypes", "--model", "tiny", "--tokens", "256", "--repeats", "2")
    for what in ("float32 |", "bfloat16 -> float32 (mixed) |", "int8 -> int32 |", "forward [2, 128] mixed |",
                 "loss gradients [2, 128] float32 |"):
        assert what in proc.stdout, proc.stdout
