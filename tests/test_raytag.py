"""`flaxner tag --engine ray`: slicing and numbering (fast, no Ray), then on a local 3-node Ray cluster (marker
`ray`): every input line comes back, equal to the local tagger, across nodes, through an actor crash, a killed
driver with --resume, and on a 2-CPU cluster."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flaxner.tagging import raytag
from helpers import read_jsonl as _read

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("EU rejects German call to boycott British lamb . Peter Blackburn BRUSSELS 1996-08-22 The European "
         "Commission said on Thursday it disagreed with German advice to consumers . Only France and Britain backed "
         "Fischler 's proposal .").split()


def _lines_of(data: bytes) -> list[bytes]:
    """The lines as flaxner numbers them: split after each newline, a last line without one included."""
    return data.splitlines(keepends=True)


@pytest.mark.parametrize("data", [b"a\nbb\n\nccc\n", b"x" * 50 + b"\n" + b"y\n" * 7 + b"last",
                                  b"\n\n\n", b"one long line without newline", b"r\r\nn\r\n" * 9])
@pytest.mark.parametrize("slice_bytes", [1, 2, 3, 7, 16, 1000])
def test_slices_tile_the_file_with_real_line_numbers(tmp_path, data, slice_bytes):
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    slices = raytag.cut_slices(raytag.expand_inputs([str(path)]), slice_bytes)
    raytag.number_slices(slices)
    got = [(x.number, x.raw) for s in slices for x in raytag.iter_slice(s["uri"], s["lo"], s["hi"], s["first_line"])]
    assert got == list(enumerate(_lines_of(data), 1))
    assert len(slices) == max(1, -(-len(data) // slice_bytes))


def test_gzip_is_one_slice_and_globs_expand_in_order(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / "d" / name).write_bytes(b"1\n2\n" * 100)
    with gzip.open(tmp_path / "z.jsonl.gz", "wb") as f:
        f.write(b"x\ny\nz")
    files = raytag.expand_inputs([str(tmp_path / "z.jsonl.gz"), str(tmp_path / "d" / "*.jsonl")])
    assert [Path(f["uri"]).name for f in files] == ["z.jsonl.gz", "a.jsonl", "b.jsonl"]
    slices = raytag.cut_slices(files, 64)
    assert [s["parts"] for s in slices][:1] == [1] and len(slices) == 1 + 2 * 7
    assert [(x.number, x.raw) for x in raytag.iter_slice(files[0]["uri"], 0, 0, 1)] == [(1, b"x\n"), (2, b"y\n"),
                                                                                         (3, b"z")]
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        raytag.expand_inputs([str(tmp_path / "d" / "*.ndjson")])
    with pytest.raises(FileNotFoundError, match="no such input file"):
        raytag.expand_inputs([str(tmp_path / "missing.jsonl")])


# ---------------------------------------------------------------- on a Ray cluster

OVERRIDES = dict(buckets=(16, 32, 64, 128), max_length=128, stride=32, batch_tokens=512, lookahead=16,
                 dtype="float32")
CLI_OVERRIDES = dict(dtype="float32", batch_tokens=512, max_length=128, stride=32, lookahead=16)  # _cli's flags
BAD = [b'{"id": "a", "text": "Peter Blackburn"}', b"not json", b"", b'{"id": "m"}', b'{"id": "n", "text": null}',
       b"[1, 2]", b'{"text": "Caf\xe9 in \xff Paris"}', b'{"text": 42}', b'{"text": "BRUSSELS 1996-08-22"}']


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A big plain file (many slices, ids from line numbers on every 3rd line), a file of bad lines without a
    final newline, and a .gz file; with `files` in tagging order and `overrides` (a shared compile cache)."""
    import random

    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    big = []
    for i in range(400):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice([0, 2, 5, 12, 30])))
        big.append(json.dumps({"text": text} if i % 3 == 0 else {"id": f"b{i}", "text": text}).encode())
    (d / "part-0.jsonl").write_bytes(b"\n".join(big) + b"\n")
    (d / "part-1.jsonl").write_bytes(b"\n".join(BAD))
    with gzip.open(d / "part-2.jsonl.gz", "wb") as f:
        f.write(b"".join(json.dumps({"id": f"z{i}", "text": " ".join(WORDS[i:i + 9])}).encode() + b"\n"
                         for i in range(30)))
    files = [d / "part-0.jsonl", d / "part-1.jsonl", d / "part-2.jsonl.gz"]
    return {"dir": d, "files": files, "glob": str(d / "part-*.jsonl*"),
            "overrides": {**OVERRIDES, "compilation_cache": str(tmp_path_factory.mktemp("jax-cache"))}}


@pytest.fixture(scope="module")
def reference(tiny_ner_dir, corpus, tmp_path_factory) -> list[dict]:
    """`flaxner tag` (the local engine) on each file, concatenated."""
    from flaxner.tagging.tagger import Tagger

    tagger = Tagger.from_pretrained(tiny_ner_dir, **corpus["overrides"])
    out = tmp_path_factory.mktemp("reference")
    rows = []
    for k, f in enumerate(corpus["files"]):
        tagger.tag_file(str(f), str(out / f"{k}.jsonl"), progress=False)
        rows += [json.loads(x) for x in (out / f"{k}.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows


@pytest.fixture(scope="module")
def cluster():
    """A head without room for an actor (1 CPU) and 2 worker nodes of 2 CPUs: the pool is one actor per worker."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=2) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield {"address": c.address, "workers": {w.node_id for w in workers}}
    ray.shutdown()
    c.shutdown()


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g["id"], g.get("error"), g.get("warning")) == (w["id"], w.get("error"), w.get("warning"))
        if "error" in w:
            assert "entities" not in g
            continue
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in g["entities"]] == \
               [(e["start"], e["end"], e["label"], e["text"]) for e in w["entities"]]
        assert all(abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(g["entities"], w["entities"]))


def _cli(corpus, tiny_ner_dir, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "flaxner.cli", "tag", corpus["glob"], "--engine", "ray", "--model", str(tiny_ner_dir),
            "-o", str(out), "--join", str(out / "all.jsonl"), "--no-progress", "--dtype", "float32",
            "--batch-tokens", "512", "--max-length", "128", "--stride", "32", "--lookahead", "16", *extra]


@pytest.mark.ray
def test_a_two_cpu_machine_does_not_hang(tiny_ner_dir, corpus, tmp_path):
    """A fresh local Ray of 2 CPUs (its own process: one Ray per driver): the pool leaves a CPU free and the run
    ends; a pool of 2 one-CPU actors is refused."""
    script = textwrap.dedent(f"""
        import json, ray
        from flaxner.tagging import raytag
        ray.init(num_cpus=2, logging_level="WARNING")
        try:
            raytag.choose_pool(actors=2)
            raise SystemExit("a pool of 2 actors on 2 CPUs was accepted")
        except ValueError as e:
            assert "at most 1 actors" in str(e), e
        s = raytag.tag_files({[str(f) for f in corpus['files'][1:]]!r}, {str(tiny_ner_dir)!r}, {str(tmp_path / 'o')!r},
                             progress=False, **{corpus['overrides']!r})
        print(json.dumps({{"lines": s["lines"], "actors": s["pool"]["actors"]}}))
    """)
    p = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"lines": len(BAD) + 30, "actors": 1}


@pytest.mark.ray
def test_every_line_comes_back_equal_to_the_local_tagger_across_nodes(cluster, tiny_ner_dir, corpus, reference,
                                                                      tmp_path, monkeypatch):
    monkeypatch.setattr(raytag, "DRIVER_COUNT_BYTES", 0)  # the counting pass as Ray tasks
    out = tmp_path / "out"
    s = raytag.tag_files([corpus["glob"]], str(tiny_ner_dir), str(out), join=str(tmp_path / "all.jsonl"),
                         slice_bytes=3000, progress=False, **corpus["overrides"])
    plan = json.loads((out / "plan.json").read_text())
    parts = [x["parts"] for x in plan["slices"] if x["uri"].endswith("part-0.jsonl")]
    assert len(parts) >= 4 and s["slices"] == len(parts) + 2  # the big file in several tasks, gz whole
    assert len(set(s["nodes"])) >= 2 and set(s["nodes"]) <= cluster["workers"]  # one actor per worker node
    got = _read(tmp_path / "all.jsonl")
    _assert_same(got, reference)
    assert sum(len(_read(out / raytag.slice_name(k))) for k in range(s["slices"])) == len(got)
    lines = [len(_lines_of(f.read_bytes() if f.suffix != ".gz" else gzip.decompress(f.read_bytes())))
             for f in corpus["files"]]
    assert s["lines"] == len(got) == sum(lines)
    bad = got[lines[0]:lines[0] + lines[1]]
    assert bad[1]["error"] == "line 2: not JSON (Expecting value at column 1)" and bad[1]["id"] == 2
    assert bad[2]["entities"] == [] and bad[2]["id"] == 3 and "missing" in bad[3]["error"]  # a blank line: empty
    assert "a NoneType, not a string" in bad[4]["error"] and "not a JSON object" in bad[5]["error"]
    assert "U+FFFD" in bad[6]["warning"] and "entities" in bad[8]
    assert [r["id"] for r in got[:lines[0]:3]] == list(range(1, lines[0] + 1, 3))  # real line numbers as ids
    assert sum("entities" in r and bool(r["entities"]) for r in got) > 50


@pytest.mark.ray
def test_pool_leaves_every_node_a_cpu(cluster):
    pool = raytag.choose_pool()
    assert pool["actors"] == 2 and set(pool["slots"]) == cluster["workers"] and pool["num_cpus"] == 1
    with pytest.raises(ValueError, match="at most 2 actors"):
        raytag.choose_pool(actors=3)
    with pytest.raises(ValueError, match="at most 0 actors"):
        raytag.choose_pool(cpus_per_actor=2)


@pytest.mark.ray
def test_a_crashed_actor_loses_and_duplicates_nothing(cluster, tiny_ner_dir, corpus, reference, tmp_path, monkeypatch,
                                                      capsys):
    marker = tmp_path / "died"
    monkeypatch.setenv(raytag._FAULT_ENV, f"die:1:{marker}")  # a crash midway through an actor's second slice
    out = tmp_path / "out"
    s = raytag.tag_files(corpus["glob"], str(tiny_ner_dir), str(out), join=str(tmp_path / "all.jsonl"),
                         slice_bytes=3000, progress=False, **corpus["overrides"])
    assert marker.is_file()
    assert "tag: ray pool of 2 actors × 1 CPU" in capsys.readouterr().err
    assert s["slices_tagged"] == s["slices"] and sorted(s["tagged"]) == list(range(s["slices"]))
    _assert_same(_read(tmp_path / "all.jsonl"), reference)
    assert not list(out.glob("*.tmp"))  # the dead attempt's file was swept at the end


@pytest.mark.ray
def test_a_killed_driver_resumes_without_gap_or_duplicate(cluster, tiny_ner_dir, corpus, reference, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), raytag._FAULT_ENV: "sleep:1"}
    p = subprocess.Popen(_cli(corpus, tiny_ner_dir, out, "--address", cluster["address"], "--slice-mb", "0.003"),
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while not list(out.glob("slice-*.jsonl")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = sorted(out.glob("slice-*.jsonl"))
    plan = json.loads((out / "plan.json").read_text())
    assert 1 <= len(done) < len(plan["slices"]) and not (out / "all.jsonl").exists()
    s = raytag.tag_files([corpus["glob"]], str(tiny_ner_dir), str(out), join=str(out / "all.jsonl"), resume=True,
                         slice_bytes=int(0.003 * (1 << 20)), progress=False, **CLI_OVERRIDES)  # as the CLI's
    assert not set(s["tagged"]) & {int(f.name[6:11]) for f in done}  # committed slices are not redone
    assert len(s["tagged"]) + len(done) >= len(plan["slices"])
    _assert_same(_read(out / "all.jsonl"), reference)
    assert not list(out.glob("*.tmp"))
