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

from flaxner.tagging import rayplan, raytag
from flaxner.tagging.reading import TagInputError
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
    slices = rayplan.cut_slices(rayplan.expand_inputs([str(path)]), slice_bytes)
    rayplan.number_slices(slices)
    got = [(x.number, x.raw) for s in slices for x in rayplan.iter_slice(s["uri"], s["lo"], s["hi"], s["first_line"])]
    assert got == list(enumerate(_lines_of(data), 1))
    assert len(slices) == max(1, -(-len(data) // slice_bytes))


def test_gzip_is_one_slice_and_globs_expand_in_order(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / "d" / name).write_bytes(b"1\n2\n" * 100)
    with gzip.open(tmp_path / "z.jsonl.gz", "wb") as f:
        f.write(b"x\ny\nz")
    files = rayplan.expand_inputs([str(tmp_path / "z.jsonl.gz"), str(tmp_path / "d" / "*.jsonl")])
    assert [Path(f["uri"]).name for f in files] == ["z.jsonl.gz", "a.jsonl", "b.jsonl"]
    slices = rayplan.cut_slices(files, 64)
    assert [s["parts"] for s in slices][:1] == [1] and len(slices) == 1 + 2 * 7
    assert [(x.number, x.raw) for x in rayplan.iter_slice(files[0]["uri"], 0, 0, 1)] == [(1, b"x\n"), (2, b"y\n"),
                                                                                         (3, b"z")]
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        rayplan.expand_inputs([str(tmp_path / "d" / "*.ndjson")])
    with pytest.raises(FileNotFoundError, match="no such input file"):
        rayplan.expand_inputs([str(tmp_path / "missing.jsonl")])


def test_a_slice_is_read_by_the_local_reader_cap_and_damaged_gzip_included(tmp_path):
    """Ray's slices go through `tagging.reading.LineReader`: a line over --max-line-bytes comes back unread with its
    error, the next lines intact; a truncated .gz gives every readable line, then one error line (no exception)."""
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"text": "a"}\n' + b'{"text": "' + b"x" * (3 << 20) + b'"}\n' + b'{"text": "b"}\n')
    got = list(rayplan.iter_slice(str(big), 0, big.stat().st_size, 1, max_line_bytes=1_000_000))
    assert [x.number for x in got] == [1, 2, 3] and got[0].error is None and got[2].raw == b'{"text": "b"}\n'
    assert got[1].raw == b"" and "over the --max-line-bytes cap of 1,000,000" in got[1].error
    data = gzip.compress(b"".join(b'{"id": %d, "text": "Peter Blackburn"}\n' % i for i in range(2000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[:len(data) * 2 // 3])
    got = list(rayplan.iter_slice(str(tmp_path / "cut.jsonl.gz"), 0, 0, 1))
    assert all(x.error is None for x in got[:-1]) and len(got) > 100
    assert "damaged after line" in got[-1].error and got[-1].number == len(got)


def test_both_engines_take_the_same_tag_options(tmp_path, monkeypatch):
    """`--words`, `--max-line-bytes` and every other TagConfig option reach the Ray actors as the local tagger."""
    import dataclasses
    import types

    from flaxner.cli import TAG_OPTIONS, build_parser
    from flaxner.config import TagConfig

    fields = {f.name for f in dataclasses.fields(TagConfig)}
    flags = {f[-1].lstrip("-").replace("-", "_") for f, _, _ in TAG_OPTIONS}
    assert fields & flags <= set(raytag.OVERRIDES)
    seen = {}
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))  # run_cli only checks Ray is there
    monkeypatch.setattr(raytag, "tag_files", lambda *a, **kw: seen.update(kw) or {"tagged": []})
    args = build_parser().parse_args(["tag", "in.jsonl", "--engine", "ray", "-o", str(tmp_path / "o"), "--model", "m",
                                      "--words", "tokenizer", "--max-line-bytes", "5", "--overwrite"])
    assert raytag.run_cli(args) == 0
    assert seen["words"] == "tokenizer" and seen["max_line_bytes"] == 5 and seen["overwrite"] is True


def _refused(tmp_path, inputs, out, match, **kw):
    with pytest.raises(TagInputError, match=match):
        raytag.tag_files(inputs, str(tmp_path), str(out), progress=False, **kw)


def test_ray_outputs_that_are_inputs_links_or_earlier_runs_are_refused(tmp_path):
    """Before any work (no Ray started): a --join or -o that is, holds or links to an input; an existing --join or
    an earlier run's folder without --resume/--overwrite; --overwrite never removes a slice-* file its plan.json
    does not list. Nothing is written or removed."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Peter Blackburn"}\n')
    out = tmp_path / "out"
    _refused(tmp_path, [str(src)], out, "--join .*in.jsonl is the input file", join=str(src))
    (tmp_path / "link.jsonl").symlink_to(src)
    _refused(tmp_path, [str(src)], out, "is the input file", join=str(tmp_path / "link.jsonl"), overwrite=True)
    _refused(tmp_path, [str(src)], tmp_path, "holds the input file")
    _refused(tmp_path, [str(src)], src, "in.jsonl: is not a folder")
    _refused(tmp_path, [str(src)], out, "a name the slices of -o .* use", join=str(out / raytag.slice_name(0)))
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me\n")
    (tmp_path / "j.jsonl").symlink_to(secret)
    _refused(tmp_path, [str(src)], out, "--join .*j.jsonl: is a symlink", join=str(tmp_path / "j.jsonl"),
             overwrite=True)
    (tmp_path / "outlink").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _refused(tmp_path, [str(src)], tmp_path / "outlink", "outlink: is a symlink")
    (tmp_path / "all.jsonl").write_text("an earlier join\n")
    _refused(tmp_path, [str(src)], out, "all.jsonl exists; pass --overwrite", join=str(tmp_path / "all.jsonl"))
    out.mkdir()
    (out / raytag.PLAN).write_text(json.dumps({"key": {}, "slices": [{"index": 0}]}))
    (out / raytag.slice_name(0)).write_text("an earlier run's slice\n")
    _refused(tmp_path, [str(src)], out, "holds an earlier run's output .*pass --resume to continue it or --overwrite")
    (out / raytag.slice_name(1)).write_text("my own file\n")
    _refused(tmp_path, [str(src)], out, "slice-00001.jsonl is no slice its plan.json lists", overwrite=True)
    assert (out / raytag.slice_name(1)).read_text() == "my own file\n" and (out / raytag.slice_name(0)).exists()
    assert secret.read_text() == "keep me\n" and src.read_text() == '{"text": "Peter Blackburn"}\n'
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "slice-00000.jsonl", "slice-00001.jsonl"]


# ---------------------------------------------------------------- on a Ray cluster

# float32 and one window a row: engines that batch the same lines differently then give the same bits (packed rows
# and `mixed` may round a score differently beside other neighbours; docs/tagging.md)
OVERRIDES = dict(buckets=(16, 32, 64, 128), max_length=128, stride=32, batch_tokens=512, lookahead=16,
                 dtype="float32", pack_length=0)
CLI_OVERRIDES = dict(dtype="float32", pack_length=0, batch_tokens=512, max_length=128, stride=32,
                     lookahead=16)  # _cli's flags
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
        # `g`: runs of 7 lines are one document for --document-field
        big.append(json.dumps({"text": text, "g": i // 7} if i % 3 == 0 else {"id": f"b{i}", "text": text,
                                                                              "g": i // 7}).encode())
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
            "--pack-length", "0", "--batch-tokens", "512", "--max-length", "128", "--stride", "32", "--lookahead", "16", *extra]


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
    monkeypatch.setattr(rayplan, "DRIVER_COUNT_BYTES", 0)  # the counting pass as Ray tasks
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


@pytest.mark.ray
def test_ray_caps_long_lines_and_reads_a_damaged_gzip_as_the_local_engine(cluster, tiny_ner_dir, corpus, tmp_path):
    """A 3 MB line (over the 1 MB default cap) and a truncated .gz: Ray writes what `flaxner tag` writes."""
    from flaxner.tagging.tagger import Tagger

    (tmp_path / "in").mkdir()
    big = tmp_path / "in" / "big.jsonl"
    big.write_bytes(b'{"text": "Peter Blackburn"}\n{"text": "' + b"x " * (3 << 19) + b'"}\n{"text": "BRUSSELS"}\n')
    data = gzip.compress(b"".join(json.dumps({"id": i, "text": " ".join(WORDS[i % 9:i % 9 + 6])}).encode() + b"\n"
                                  for i in range(3000)))
    cut = tmp_path / "in" / "cut.jsonl.gz"
    cut.write_bytes(data[:len(data) // 2])
    tagger = Tagger.from_pretrained(tiny_ner_dir, **corpus["overrides"])
    want = []
    for k, f in enumerate((big, cut)):
        tagger.tag_file(str(f), str(tmp_path / f"ref{k}.jsonl"), progress=False)
        want += _read(tmp_path / f"ref{k}.jsonl")
    s = raytag.tag_files([str(big), str(cut)], str(tiny_ner_dir), str(tmp_path / "out"),
                         join=str(tmp_path / "all.jsonl"), progress=False, **corpus["overrides"])
    got = _read(tmp_path / "all.jsonl")
    _assert_same(got, want)
    assert "over the --max-line-bytes cap" in got[1]["error"] and "damaged after line" in got[-1]["error"]
    assert s["lines"] == len(want) and s["errors"] == 2


@pytest.mark.ray
def test_ray_resume_counts_the_whole_output_and_overwrite_replaces_only_its_own(cluster, tiny_ner_dir, corpus,
                                                                               reference, tmp_path):
    out, join = tmp_path / "out", tmp_path / "all.jsonl"
    kw = dict(slice_bytes=3000, progress=False, **corpus["overrides"])
    first = raytag.tag_files(corpus["glob"], str(tiny_ner_dir), str(out), **kw)
    n = first["slices"]
    for k in (1, n - 1):  # as if the driver had been killed before these were committed
        (out / raytag.slice_name(k)).unlink()
        (out / raytag.stats_name(k)).unlink()
    (out / raytag.stats_name(2)).unlink()  # ... or between a slice's two renames: its lines are counted instead
    (out / "notes.txt").write_text("mine")
    again = raytag.tag_files(corpus["glob"], str(tiny_ner_dir), str(out), join=str(join), resume=True, **kw)
    kinds = ("lines", "errors", "warnings", "entities")
    assert again["tagged"] == [1, n - 1] and {k: again[k] for k in kinds} == {k: first[k] for k in kinds}
    assert 0 < again["this_run"]["lines"] < first["lines"] == again["this_run"]["lines"] + again["resumed_lines"]
    _assert_same(_read(join), reference)
    third = raytag.tag_files(corpus["glob"], str(tiny_ner_dir), str(out), join=str(join), overwrite=True, **kw)
    assert third["slices_tagged"] == n and third["resumed_lines"] == 0 and (out / "notes.txt").read_text() == "mine"
    _assert_same(_read(join), reference)


@pytest.mark.ray
@pytest.mark.parametrize("opts", [
    {"words": "tokenizer", "aggregation": "max", "max_line_bytes": 400},
    {"context": "document", "keep_fields": True, "id_field": "doc"},
    {"input_format": "jsonl", "context": "neighbours", "context_size": 8, "segment_length": 20, "max_length": 64,
     "stride": 16, "batch_size": 4, "batch_tokens": 0, "lookahead": 7, "dtype": "float32", "pack_length": 0},
    {"context": "document", "document_field": "g", "max_length": 64, "stride": 16, "lookahead": 5},
], ids=["words-aggregation-cap", "context-keep-fields", "shapes-and-context", "document-field"])
def test_every_engine_gives_the_same_lines(cluster, tiny_ner_dir, corpus, tmp_path, opts):
    """The local engine, --processes 2 and --engine ray on one input with bad lines, an over-long line and a
    truncated .gz, under the same options: the same lines (scores to 1e-4: batches differ between engines)."""
    from flaxner.cli import main
    from flaxner.tagging.tagger import Tagger

    src = tmp_path / "in.jsonl"
    src.write_bytes(corpus["files"][0].read_bytes()[:6000] + b"\n".join(BAD) + b"\n" +
                    json.dumps({"doc": "long", "text": "Peter " * 200}).encode() + b"\n")
    data = gzip.compress(src.read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[:len(data) * 3 // 4])
    file_opts = {k: opts[k] for k in ("keep_fields", "id_field", "max_line_bytes", "input_format") if k in opts}
    tag_opts = {**corpus["overrides"], **{k: v for k, v in opts.items() if k not in file_opts}}
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    for inp in (src, tmp_path / "cut.jsonl.gz"):
        local = tmp_path / f"{inp.name}.local.jsonl"
        Tagger.from_pretrained(tiny_ner_dir, **tag_opts).tag_file(
            str(inp), str(local), progress=False, **{("fmt" if k == "input_format" else k): v
                                                     for k, v in file_opts.items()})
        procs = tmp_path / f"{inp.name}.procs.jsonl"
        argv = ["tag", str(inp), "--model", str(tiny_ner_dir), "-o", str(procs), "--no-progress", "--processes", "2",
                "--dtype", "float32", "--pack-length", "0", "--batch-tokens", "512", "--max-length", "128",
                "--stride", "32", "--lookahead", "16", *flags]
        if inp.suffix != ".gz":  # a damaged .gz is one shard's input only: --processes reads it whole, exit 1
            assert main(argv) == 0
            _assert_same(_read(procs), _read(local))
        joined = tmp_path / f"{inp.name}.ray.jsonl"
        raytag.tag_files([str(inp)], str(tiny_ner_dir), str(tmp_path / f"{inp.name}.ray"), join=str(joined),
                         slice_bytes=2000, progress=False, **{("fmt" if k == "input_format" else k): v
                                                              for k, v in {**tag_opts, **file_opts}.items()})
        _assert_same(_read(joined), _read(local))


@pytest.mark.ray
def test_ray_writes_every_format_as_the_local_engine(cluster, tiny_ner_dir, corpus, tmp_path):
    """--engine ray with --join writes each output format as `flaxner tag` does (slices of staged records, the
    format written at the join), resumes a run whose slices were partly committed, and refuses a format without
    --join or a run of another format in the same folder."""
    from flaxner.tagging import formats
    from flaxner.tagging.tagger import Tagger
    from test_formats import _formats, _same_output

    src = tmp_path / "in.jsonl"
    src.write_bytes(corpus["files"][0].read_bytes()[:6000] + b"\n".join(BAD) + b"\n")
    tagger = Tagger.from_pretrained(tiny_ner_dir, **corpus["overrides"])
    kw = dict(slice_bytes=1500, progress=False, **corpus["overrides"])
    for fmt in _formats():
        local, out, join = tmp_path / f"local-{fmt}", tmp_path / f"ray-{fmt}", tmp_path / f"joined-{fmt}"
        tagger.tag_file(str(src), str(local), progress=False, output_format=formats.OutputSpec(fmt,
                                                                                              model_version="v1"))
        first = raytag.tag_files([str(src)], str(tiny_ner_dir), str(out), join=str(join), output_format=fmt,
                                 model_version="v1", **kw)
        _same_output(fmt, join, local)
        (out / raytag.slice_name(1)).unlink()  # as if the driver had died before this slice was committed
        again = raytag.tag_files([str(src)], str(tiny_ner_dir), str(out), join=str(join), output_format=fmt,
                                 model_version="v1", resume=True, **kw)
        assert again["tagged"] == [1] and again["lines"] == first["lines"]
        _same_output(fmt, join, local)
    with pytest.raises(ValueError, match="needs --join FILE"):
        raytag.tag_files([str(src)], str(tiny_ner_dir), str(tmp_path / "nojoin"), output_format="conll", **kw)
    with pytest.raises(ValueError, match="--resume"):
        raytag.tag_files([str(src)], str(tiny_ner_dir), str(tmp_path / "ray-conll"), join=str(tmp_path / "j"),
                         output_format="html", resume=True, **kw)
