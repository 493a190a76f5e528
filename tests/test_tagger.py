"""The batch tagger: offsets, windows, order, bad lines, resume, shards, compile count, HF pipeline parity."""

from __future__ import annotations

import gzip
import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from flaxner.config import ModelConfig
from flaxner.data.labels import CONLL_LABELS
from flaxner.tagging.tagger import Tagger
from flaxner.tagging.reading import Record
from flaxner.tagging.summary import TagSummary
from flaxner.tagging.writing import OutputWriter, TagInterrupted, default_output
from helpers import FIXTURE, SENTENCES, tag_config as _tag_config, corpus as _corpus, read_jsonl as _read, write_jsonl as _write_jsonl
from flaxner.data.rows import plan_windows
from flaxner.tagging.windows import DocState, encode, entities, entities_many

TRICKY = [
    "Ça a été très bien à Zürich, São Paulo et Montréal.",
    "東京タワーは日本にあります。 Tokyo Tower 🗼 is in Japan 🇯🇵!",
    "Emoji 👩‍👩‍👧 family, 😀😀 twins and e\u0301 combining, a\u0308\u0301 stacked.",
    "tabs\there\tand   runs    of spaces\n and a newline, Ω ≠ Å.",
    "   leading and trailing   ",
    "Mixed: Ελληνικά, русский, العربية, हिन्दी.",
]


@pytest.mark.parametrize("n,size,stride", [(5, 10, 3), (10, 10, 3), (11, 10, 3), (100, 10, 3), (57, 16, 7),
                                           (1000, 510, 128), (2000, 126, 100), (30, 8, 0)])
def test_windows_tile_and_keep_most_context(n, size, stride):
    wins = plan_windows(n, size, stride)
    assert wins[0][2] == 0 and wins[-1][3] == n
    for (a, b, lo, hi), nxt in zip(wins, wins[1:] + [None]):
        assert 0 <= a <= lo < hi <= b <= n and b - a == min(size, n)
        if nxt is not None:
            assert nxt[2] == hi
    for t in range(n):  # the owner gives the token the most context on its nearer side
        owner = next(w for w in wins if w[2] <= t < w[3])
        best = max(min(t - a, b - 1 - t) for a, b, _, _ in wins if a <= t < b)
        assert min(t - owner[0], owner[1] - 1 - t) == best


@pytest.mark.parametrize("tokenizer_dir", ["fixture", "minilm"])
def test_word_offsets_round_trip_on_tricky_unicode(tokenizer_dir):
    """Word spans are non-empty, whitespace-free, increasing, and cover every letter, digit and symbol, also
    with MiniLM's lowercasing and accent stripping."""
    from tokenizers import Tokenizer

    from flaxner.models.loading import packaged_minilm

    folder = FIXTURE if tokenizer_dir == "fixture" else Path(packaged_minilm())
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.no_truncation()
    backend.no_padding()
    long = TRICKY[1] * 40
    docs = encode(backend, [Record(i + 1, i, t) for i, t in enumerate(TRICKY + [long])])
    for rec, doc in docs:
        text = rec.text
        w = doc.word_ids
        first = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
        last = np.r_[first[1:], len(w)] - 1
        own = backend.encode(text, add_special_tokens=False)  # the chunk's merged Encoding reads as this one
        assert [doc.token_chars(t) for t in range(len(doc.ids))] == own.offsets and doc.ids.tolist() == own.ids
        spans = [(doc.token_chars(a)[0], doc.token_chars(b)[1]) for a, b in zip(first, last)]
        covered = set()
        prev_end = 0
        for s, e in spans:
            assert prev_end <= s < e <= len(text)
            assert text[s:e] == text[s:e].strip() and not any(c.isspace() for c in text[s:e])
            covered.update(range(s, e))
            prev_end = e
        for i, c in enumerate(text):
            if unicodedata.category(c)[0] in "LNS" and c != "\ufffd":
                assert i in covered, (text, i, c)


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_entities_of_many_documents_at_once_equal_each_alone(aggregation):
    """The batched word/span pass never lets a word or a span run from one document into the next."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        docs = []
        for k in range(int(rng.integers(1, 7))):
            n = int(rng.integers(0, 25))
            words = np.sort(rng.integers(0, max(n // 2, 1), n)).astype(np.int32)
            offsets = np.stack([np.arange(n) * 3, np.arange(n) * 3 + 2], 1).astype(np.int64).reshape(n, 2)
            doc = DocState(k, "x" * (3 * n), np.zeros(n, np.int32), words, offsets)
            if aggregation == "first":  # every document starts with an entity: a span could run across
                doc.pred = rng.choice(9, n, p=[0.4] + [0.6 / 8] * 8).astype(np.int32)
                doc.pred[:1] = 2  # I-PER
                doc.score = rng.random(n).astype(np.float32)
            else:
                p = rng.random((n, 9)).astype(np.float32)
                doc.pred = np.round(p / p.sum(1, keepdims=True), 1)  # ties inside words for "max"
            docs.append(doc)
        alone = [entities(d, CONLL_LABELS, aggregation) for d in docs]
        assert entities_many(docs, CONLL_LABELS, aggregation) == alone
        assert all(e["end"] <= 3 * len(d.ids) for d, ents in zip(docs, alone) for e in ents)


def test_entities_slice_back_to_the_text(tagger):
    results = tagger.tag(TRICKY + SENTENCES)
    assert sum(map(len, results)) > 10
    for text, ents in zip(TRICKY + SENTENCES, results):
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"] == e["text"].strip() != ""
            assert e["label"] in {"PER", "ORG", "LOC", "MISC"} and 0 < e["score"] <= 1


def _reference(tiny_ner_dir, texts):
    """One plain forward per text (no windows, no batching), first-sub-token labels, seqeval spans."""
    from flaxner.data.labels import spans_from_tags
    from flaxner.models.loading import load_trained

    import jax

    model, params, tok, labels = load_trained(tiny_ner_dir)
    forward = jax.jit(lambda ids, mask: model(ids, mask, params=params).logits)
    out = []
    for text in texts:
        enc = tok(text, return_offsets_mapping=True, return_tensors="np", padding="max_length", max_length=128)
        n = int(enc["attention_mask"].sum())
        probs = np.asarray(forward(enc["input_ids"], enc["attention_mask"])[0])[:n]
        probs = np.exp(probs - probs.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        words = enc.word_ids(0)[:n]
        firsts = [k for k, w in enumerate(words) if w is not None and (k == 0 or words[k - 1] != w)]
        lasts = [k for k, w in enumerate(words) if w is not None and (k + 1 == len(words) or words[k + 1] != w)]
        tags = [labels[int(probs[k].argmax())] for k in firsts]
        ents = []
        for typ, a, b in spans_from_tags(tags):
            s, e = int(enc["offset_mapping"][0][firsts[a]][0]), int(enc["offset_mapping"][0][lasts[b - 1]][1])
            ents.append((typ, s, e, float(np.mean([probs[k].max() for k in firsts[a:b]]))))
        out.append(ents)
    return out


def _key(results):
    return [[(e["label"], e["start"], e["end"]) for e in ents] for ents in results]


def test_batched_windowed_tagger_equals_single_pass_on_short_documents(tiny_ner_dir):
    tagger = Tagger.from_pretrained(tiny_ner_dir, _tag_config(context="document"))  # one row per text
    texts = [t for t in SENTENCES + TRICKY[:2] + _corpus(30, seed=3)
             if len(tagger.backend.encode(t, add_special_tokens=False).ids) <= 126]  # one window of 128
    ref = _reference(tiny_ner_dir, texts)
    got = tagger.tag(texts)
    assert _key(got) == [[r[:3] for r in ents] for ents in ref]
    for g, r in zip(got, ref):
        np.testing.assert_allclose([e["score"] for e in g], [x[3] for x in r], atol=1e-4)
    # small windows on documents that fit in one: the same entities
    small = Tagger.from_pretrained(tiny_ner_dir, _tag_config(max_length=64, stride=16, context="document"))
    short = [t for t in texts if len(tagger.backend.encode(t, add_special_tokens=False).ids) <= 62]
    assert _key(small.tag(short)) == _key(tagger.tag(short))


def test_long_documents_are_windowed_never_cut(tiny_ner_dir):
    tagger = Tagger.from_pretrained(tiny_ner_dir, _tag_config(buckets=(64, 512), max_length=512, stride=128))
    text = " ".join(SENTENCES) + " "
    doc = text * 25  # ~2,000 sub-tokens
    n = len(tagger.backend.encode(doc, add_special_tokens=False).ids)
    assert n > 1500
    (ents,) = tagger.tag([doc])
    assert tagger.stats.long_docs == 1 and tagger.stats.windows >= 4
    enc = tagger.backend.encode(doc, add_special_tokens=False)
    past_512 = enc.offsets[600][0]
    assert any(e["start"] > past_512 for e in ents)
    assert max(e["end"] for e in ents) > enc.offsets[n - 200][0]  # found near the end too
    for e in ents:
        assert doc[e["start"]:e["end"]] == e["text"]


def test_output_order_on_a_shuffled_length_corpus(tiny_ner_dir, tagger, tmp_path):
    texts = _corpus(150, seed=1)
    src = _write_jsonl(tmp_path / "c.jsonl", texts)
    summary = tagger.tag_file(str(src), progress=False)
    out = _read(default_output(str(src)))
    assert [r["id"] for r in out] == [f"d{i}" for i in range(150)]
    assert summary["lines"] == 150 and summary["errors"] == 0
    assert isinstance(summary, TagSummary) and summary.lines == 150 and list(summary.to_json()) == [  # as printed
        "lines", "errors", "warnings", "entities", "output", "this_run", "resumed_lines", "seconds", "tokens",
        "docs_per_s", "tokens_per_s", "compiles", "shapes", "long_docs"]
    one_by_one = [tagger.tag([t])[0] for t in texts[:12]]
    assert _key([r["entities"] for r in out[:12]]) == _key(one_by_one)


@pytest.mark.parametrize("pack_length,lengths", [(0, (16, 32, 64, 128)), (64, (64, 128))])
def test_compile_count_bounded_on_mixed_lengths(tiny_ner_dir, pack_length, lengths):
    """One window a row: a full and a small shape per bucket; packed rows: per packed length and longer bucket."""
    cfg = _tag_config(buckets=(16, 32, 64, 128), max_length=128, stride=32, pack_length=pack_length)
    tagger = Tagger.from_pretrained(tiny_ner_dir, cfg)
    texts = _corpus(120, seed=2) + [" ".join(SENTENCES) * 3]
    tagger.tag(texts)
    assert 1 < tagger.compiles <= tagger.max_compiles == 2 * len(lengths)
    assert {s for _, s in tagger.shapes} <= set(lengths)
    tagger.tag(list(reversed(texts)))
    assert tagger.compiles == tagger.forward.fn._cache_size() <= tagger.max_compiles
    before = tagger.compiles
    tagger.tag(texts)
    assert tagger.forward.fn._cache_size() == before


def test_a_replaced_forward_is_what_tags(tiny_ner_dir):
    """`Tagger.forward.fn` is a public seam (the host-side benchmark puts a stand-in model there): after it is
    replaced, every batch runs the replacement."""
    import jax
    import jax.numpy as jnp

    tagger = Tagger.from_pretrained(tiny_ner_dir, _tag_config())
    loc = tagger.labels.index("B-LOC")
    calls = []

    @jax.jit
    def stand_in(params, input_ids, attention_mask):  # every sub-token B-LOC, score 0.25
        calls.append(input_ids.shape)  # at trace time: once per shape
        return jnp.full(input_ids.shape, loc, jnp.int32), jnp.full(input_ids.shape, 0.25, jnp.float32)

    tagger.forward.fn = stand_in
    long = " ".join(SENTENCES * 3)  # several windows
    got = tagger.tag(["Peter Blackburn in BRUSSELS", long])
    assert got[0] == [{"text": w, "label": "LOC", "start": a, "end": a + len(w), "score": pytest.approx(0.25)}
                      for w, a in (("Peter", 0), ("Blackburn", 6), ("in", 16), ("BRUSSELS", 19))]
    words = [w for w, _ in tagger.backend.pre_tokenizer.pre_tokenize_str(long)]  # the tokenizer's words
    assert [e["text"] for e in got[1]] == words and {e["label"] for e in got[1]} == {"LOC"}
    assert set(calls) == tagger.shapes and tagger.compiles == len(calls)  # nothing ran the real model


@pytest.mark.slow
def test_compile_threads_change_nothing_but_when_shapes_compile(tiny_ner_dir):
    shape = dict(buckets=(16, 24, 48, 128), max_length=128, stride=32)
    ahead = Tagger.from_pretrained(tiny_ner_dir, _tag_config(compile_workers=2, **shape))
    texts = _corpus(60, seed=4) + [" ".join(SENTENCES) * 3]
    got = ahead.tag(texts)
    assert ahead.compiled_ahead >= 1 and 1 < ahead.compiles <= ahead.max_compiles
    assert ahead.forward.fn._cache_size() <= ahead.max_compiles  # nothing compiled twice
    inline = Tagger.from_pretrained(tiny_ner_dir, _tag_config(compile_workers=0, **shape))
    assert got == inline.tag(texts) and any(got) and inline.compiled_ahead == 0


def test_bad_lines_are_reported_in_place(tagger, tmp_path):
    src = tmp_path / "bad.jsonl"
    lines = [b'{"id": "a", "text": "Peter Blackburn"}', b"not json", b"[1, 2]", b'{"id": "c"}',
             b'{"text": 42}', b'{"text": ""}', b'{"text": "Caf\xe9 in \xff Paris"}', b"",
             '{"text": "Zürich 😀"}'.encode(), b'{"text": "lone \\udc80 surrogate"}']
    src.write_bytes(b"\n".join(lines) + b"\n")
    summary = tagger.tag_file(str(src), str(tmp_path / "out.jsonl"), progress=False)
    out = _read(tmp_path / "out.jsonl")
    assert len(out) == len(lines)
    assert "entities" in out[0] and out[0]["id"] == "a"
    assert out[1]["id"] == 2 and out[1]["error"].startswith("line 2: not JSON")
    assert "not a JSON object" in out[2]["error"]
    assert out[3]["id"] == "c" and "'text' is missing" in out[3]["error"]
    assert "not a string" in out[4]["error"]
    assert out[5]["entities"] == []
    assert "U+FFFD" in out[6]["warning"] and "entities" in out[6]
    assert out[7] == {"id": 8, "entities": []}  # a blank line is an empty document, as in a .txt input
    assert "warning" not in out[8] and "entities" in out[8]
    assert "U+FFFD" in out[9]["warning"] and "entities" in out[9]
    assert summary["errors"] == 4 and summary["warnings"] == 2 and summary["lines"] == len(lines)
    with pytest.raises(ValueError, match="line 2: not JSON"):
        tagger.tag_file(str(src), str(tmp_path / "out2.jsonl"), progress=False, on_error="fail")


def test_text_gzip_and_keep_fields(tagger, tmp_path):
    txt = tmp_path / "docs.txt"
    txt.write_text("Peter Blackburn\n\nBRUSSELS 1996-08-22\n", encoding="utf-8")
    tagger.tag_file(str(txt), progress=False)
    out = _read(tmp_path / "docs.entities.jsonl")
    assert [r["id"] for r in out] == [1, 2, 3] and out[1]["entities"] == []
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"doc": 7, "body": "Peter Blackburn", "meta": {"x": 1}}) + "\n")
    tagger.text_field = "body"
    try:
        tagger.tag_file(str(gz), id_field="doc", keep_fields=True, progress=False)
    finally:
        tagger.text_field = "text"
    (row,) = _read(tmp_path / "c.entities.jsonl")
    assert row["id"] == 7 and row["meta"] == {"x": 1} and row["body"] == "Peter Blackburn" and "entities" in row


def test_resume_after_a_crash_equals_a_clean_run(tagger, tmp_path, monkeypatch):
    texts = _corpus(120, seed=4)
    src = _write_jsonl(tmp_path / "c.jsonl", texts)
    clean = tmp_path / "clean.jsonl"
    tagger.tag_file(str(src), str(clean), progress=False)
    out = tmp_path / "crash.jsonl"
    real_write, calls = OutputWriter.write, {"n": 0}

    def crashing_write(self, data, *lines):
        calls["n"] += 1
        if calls["n"] == 57:
            self.f.write(data[:7])  # a torn line, as a kill mid-write leaves it
            raise KeyboardInterrupt
        real_write(self, data, *lines)

    monkeypatch.setattr(OutputWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        tagger.tag_file(str(src), str(out), progress=False, commit_every=0.0)
    monkeypatch.setattr(OutputWriter, "write", real_write)
    assert not out.exists() and Path(str(out) + ".part").exists()
    with open(str(out) + ".part", "ab") as f:
        f.write(b'{"garbage": "uncommitted"}\n')
    summary = tagger.tag_file(str(src), str(out), progress=False, resume=True)
    got, want = _read(out), _read(clean)
    assert [r["id"] for r in got] == [r["id"] for r in want]  # no gaps, no duplicates
    assert _key([r["entities"] for r in got]) == _key([r["entities"] for r in want])
    # scores may differ in the last bits: the resumed run packs the remaining lines into other batches
    np.testing.assert_allclose([e["score"] for r in got for e in r["entities"]],
                               [e["score"] for r in want for e in r["entities"]], atol=1e-4)
    assert summary["lines"] == 120 and not Path(str(out) + ".part.json").exists()


class _Batches:
    """Watches a Tagger's forward: the line of each row of each finished batch, the lines with a row in a small
    (tail) batch, and an interrupt (KeyboardInterrupt) instead of batch `stop` + 1."""

    def __init__(self, tagger, stop=None):
        self.stop, self.started, self.rows, self.small = stop, 0, [], set()
        fwd = tagger.forward
        full = {b: n for n, b in sorted(fwd.batch_shapes())}  # the larger row count of each bucket
        run, collect = fwd.run, fwd.collect

        def watched_run(ids, mask, pre):
            if self.started == self.stop:
                raise KeyboardInterrupt
            self.started += 1
            return run(ids, mask, pre)

        def watched_collect(out, rows):
            n, bucket = (out[0] if isinstance(out, tuple) else out).shape[:2]
            self.rows += [r.doc.index for r in rows]
            if n < full[bucket]:
                self.small.update(r.doc.index for r in rows)
            collect(out, rows)

        fwd.run, fwd.collect = watched_run, watched_collect


def test_an_interrupted_run_keeps_what_its_batches_finished_and_resume_tags_only_the_rest(tiny_ner_dir, tmp_path):
    """A look-ahead holding the whole file, interrupted halfway through its batches: the lines whose rows all ran
    are committed (not just the few that longest-first packing happens to finish early), the resumed run runs
    only the other lines' rows, and its output is the clean run's, but for the last digit of a score of a line
    that ran in a small tail batch in one of the runs (docs/architecture.md, "Batches, release order and resume")."""
    texts = _corpus(150, seed=12)
    src = _write_jsonl(tmp_path / "c.jsonl", texts)
    cfg = _tag_config(lookahead=256)
    clean = tmp_path / "clean.jsonl"
    tagger = Tagger.from_pretrained(tiny_ner_dir, cfg)
    watch = _Batches(tagger)
    tagger.tag_file(str(src), str(clean), progress=False)
    rows_per_line = np.bincount(watch.rows, minlength=151)
    small_clean, batches = watch.small, watch.started

    out = tmp_path / "o.jsonl"
    tagger = Tagger.from_pretrained(tiny_ner_dir, cfg)
    watch = _Batches(tagger, stop=batches // 2)
    with pytest.raises(TagInterrupted):
        tagger.tag_file(str(src), str(out), progress=False)
    done = np.bincount(watch.rows, minlength=151)
    finished = next(i for i in range(1, 151) if done[i] < rows_per_line[i]) - 1  # lines all of whose rows ran
    sidecar = Path(f"{out}.part.json")  # none: nothing was committed
    committed = json.loads(sidecar.read_text())["lines"] if sidecar.exists() else 0
    assert committed == finished >= 40  # longest-first packing of the look-ahead finished almost none
    small = small_clean | {i for i in watch.small if i <= committed}

    tagger = Tagger.from_pretrained(tiny_ner_dir, cfg)
    watch = _Batches(tagger)
    summary = tagger.tag_file(str(src), str(out), progress=False, resume=True)
    assert summary["this_run"]["lines"] == 150 - committed
    assert sorted(watch.rows) == [i for i in range(committed + 1, 151) for _ in range(rows_per_line[i])]
    small |= watch.small
    got, want = _read(out), _read(clean)
    assert [r["id"] for r in got] == [r["id"] for r in want] and _key([r["entities"] for r in got]) == \
        _key([r["entities"] for r in want])
    for line, (g, w) in enumerate(zip(got, want), 1):
        if line not in small:  # every row of the line ran in a full batch in both runs: the same bytes
            assert g == w, line
        for a, b in zip(g["entities"], w["entities"]):
            assert abs(a["score"] - b["score"]) <= 1.01e-5, line


@pytest.mark.parametrize("gz", [False, True])
def test_shards_concatenate_to_the_whole(tagger, tmp_path, gz):
    texts = _corpus(41, seed=5)
    src = tmp_path / "c.jsonl"
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    if gz:
        src = tmp_path / "c.jsonl.gz"
        with gzip.open(src, "wt") as f:
            f.write(body)
    else:
        src.write_text(body)
    whole = tmp_path / "whole.jsonl"
    tagger.tag_file(str(src), str(whole), progress=False)
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.jsonl"
        tagger.tag_file(str(src), str(part), shard=f"{i}/3", progress=False)
        assert part.read_bytes()  # every shard gets lines
        parts += _read(part)
    want = _read(whole)
    assert [r["id"] for r in parts] == [r["id"] for r in want] == list(range(1, 42))
    assert _key([r["entities"] for r in parts]) == _key([r["entities"] for r in want])
    np.testing.assert_allclose([e["score"] for r in parts for e in r["entities"]],
                               [e["score"] for r in want for e in r["entities"]], atol=1e-4)


@pytest.mark.slow
def test_processes_join_their_shards_in_order_and_resume(tiny_ner_dir, tmp_path, capsys):
    """`--processes 2` (two shard children, outputs joined) writes what one process writes; with --resume it
    starts only the shards that are not complete; a stdin input or a failing child is a clear error."""
    from flaxner.cli import main

    src = _write_jsonl(tmp_path / "c.jsonl", _corpus(60, seed=9))
    common = ["--model", str(tiny_ner_dir), "--no-progress", "--max-length", "64", "--stride", "16"]
    assert main(["tag", str(src), "-o", str(tmp_path / "one.jsonl"), *common]) == 0
    assert main(["tag", str(src), "-o", str(tmp_path / "two.jsonl"), "--processes", "2", *common]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 shard processes started" in err and '"processes": 2' in err and '"lines": 60' in err
    one, two = _read(tmp_path / "one.jsonl"), _read(tmp_path / "two.jsonl")
    assert [r["id"] for r in two] == [r["id"] for r in one] == [f"d{i}" for i in range(60)]
    assert _key([r["entities"] for r in two]) == _key([r["entities"] for r in one])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "one.jsonl", "two.jsonl"]  # shards joined

    # shard 2 of 2 finished before an interruption (as a child writes it); shard 1 never started
    out = tmp_path / "three.jsonl"
    assert main(["tag", str(src), "-o", f"{out}.shard1of2", "--shard", "1/2", *common]) == 0
    capsys.readouterr()
    stale_log = Path(f"{out}.shard1of2.log")  # what a parent killed before reading its finished child's log leaves
    stale_log.write_text("tag: the finished child's summary\n")
    assert main(["tag", str(src), "-o", str(out), "--processes", "2", "--resume", *common]) == 0
    assert "1 of 2 shard processes started (1 already complete)" in capsys.readouterr().err
    assert [r["id"] for r in _read(out)] == [r["id"] for r in one]
    assert not stale_log.exists()
    assert main(["tag", str(src), "-o", str(out), "--processes", "2", "--resume", *common]) == 2
    assert "already complete" in capsys.readouterr().err

    assert main(["tag", "-", "--processes", "2", *common]) == 2
    assert "needs an input file, not stdin" in capsys.readouterr().err
    bad = tmp_path / "bad-model"
    bad.mkdir()
    assert main(["tag", str(src), "-o", str(tmp_path / "x.jsonl"), "--processes", "2", "--model", str(bad),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "shard 1/2 failed" in err and "shard 2/2 failed" in err and "config.json" in err


def test_callable_over_column_arrays(tagger):
    batch = {"text": np.array(SENTENCES[:3], dtype=object), "n": np.arange(3)}
    out = tagger(batch)
    assert list(out["n"]) == [0, 1, 2] and out["entities"].dtype == object and len(out["entities"]) == 3
    assert _key(list(out["entities"])) == _key(tagger.tag(SENTENCES[:3]))


def test_cli_end_to_end_and_clear_errors(tiny_ner_dir, tmp_path, capsys):
    from flaxner.cli import main

    src = _write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    rc = main(["tag", str(src), "--model", str(tiny_ner_dir), "--no-progress", "--max-length", "64", "--stride", "16",
               "--aggregation", "average"])
    assert rc == 0
    assert len(_read(tmp_path / "c.entities.jsonl")) == len(SENTENCES)
    assert '"summary"' in capsys.readouterr().err
    assert main(["tag", str(src), "--model", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    from transformers import AutoTokenizer

    from flaxner.models.loading import make_model

    bad = tmp_path / "bad-labels"
    model, params = make_model(ModelConfig(name=str(FIXTURE), random_init=True), ["LABEL_0", "LABEL_1"],
                               vocab_size=1000)
    model.save_pretrained(bad, params=params)
    AutoTokenizer.from_pretrained(str(FIXTURE)).save_pretrained(bad)
    assert main(["tag", str(src), "--model", str(bad), "--no-progress", "--overwrite"]) == 2
    assert "not IOB2" in capsys.readouterr().err


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_matches_hf_pytorch_pipeline(tiny_ner_dir, aggregation):
    """Same weights in PyTorch: HF's pipeline gives the same entities (sentences without [UNK] words, which the
    pipeline glues to the previous word)."""
    pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertForTokenClassification, pipeline

    tok = AutoTokenizer.from_pretrained(str(tiny_ner_dir))
    vocab = [w for w in tok.get_vocab() if w.isalpha() and not w.startswith("[")]
    pieces = [w[2:] for w in tok.get_vocab() if w.startswith("##") and w[2:].isalpha()]
    rng = random.Random(7)
    texts = []
    while len(texts) < 24:
        words = [rng.choice(vocab) + (rng.choice(pieces) if rng.random() < 0.3 else "") for _ in range(rng.randint(3, 25))]
        text = " ".join(words)
        if tok.unk_token_id not in tok(text)["input_ids"]:
            texts.append(text)
    pt = BertForTokenClassification.from_pretrained(str(tiny_ner_dir)).eval()  # the folder's model.safetensors
    pipe = pipeline("token-classification", model=pt, tokenizer=tok, aggregation_strategy=aggregation, device="cpu")
    ref = pipe(texts, batch_size=8)
    got = Tagger.from_pretrained(tiny_ner_dir, _tag_config(aggregation=aggregation, words="tokenizer")).tag(texts)
    assert sum(map(len, got)) > 20
    assert _key(got) == [[(e["entity_group"], e["start"], e["end"]) for e in ents] for ents in ref]
    for g, r in zip(got, ref):
        np.testing.assert_allclose([e["score"] for e in g], [float(e["score"]) for e in r], atol=1e-4)


@pytest.mark.slow
def test_cli_writes_to_stdout(tiny_ner_dir, tmp_path):
    import subprocess
    import sys

    src = _write_jsonl(tmp_path / "c.jsonl", SENTENCES)
    out = subprocess.run([sys.executable, "-m", "flaxner.cli", "tag", str(src), "--model", str(tiny_ner_dir), "-o", "-",
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(lines) == len(SENTENCES) and all("entities" in x for x in lines)
    assert not (tmp_path / "c.entities.jsonl").exists()


@pytest.mark.parametrize("words", ["tokenizer", "conll"])
def test_context_none_tags_each_sentence_of_a_document_as_if_alone(tiny_ner_dir, words):
    """A model trained on single sentences sees a document's sentences one at a time (context `none`, the
    default), so a document gets exactly the entities of its sentences tagged alone, offsets shifted."""
    tagger = Tagger.from_pretrained(tiny_ner_dir, _tag_config(words=words))
    sents = [s for s in SENTENCES if s.endswith(" .")] + ['Then ( he left Brussels . ) "Fine . "']
    doc = " ".join(sents)
    expected, pos = [], 0
    for s, ents in zip(sents, tagger.tag(sents)):
        expected += [(e["label"], e["start"] + pos, e["end"] + pos, e["score"]) for e in ents]
        pos += len(s) + 1
    windows = tagger.stats.windows
    got = tagger.tag(doc)
    assert tagger.stats.windows - windows == 6  # the closing bracket and quote stay with their sentences
    assert [(e["label"], e["start"], e["end"]) for e in got] == [x[:3] for x in expected]
    np.testing.assert_allclose([e["score"] for e in got], [x[3] for x in expected], atol=1e-5)
    whole = Tagger.from_pretrained(tiny_ner_dir, _tag_config(words=words, context="document"))
    whole.tag(doc)
    assert whole.stats.windows == 1  # the document as one row, as before


def test_context_auto_follows_the_runs_data_context(tiny_ner_dir, tmp_path):
    import shutil

    from flaxner.config import load_config, replace, save_config

    run = tmp_path / "run"
    shutil.copytree(tiny_ner_dir, run / "model")
    cfg = load_config("tiny", ["data.context=neighbours", "data.context_size=8"])
    save_config(cfg, run / "config.yaml")
    tagger = Tagger.from_pretrained(run, _tag_config())
    assert (tagger.cfg.context, tagger.cfg.context_size) == ("neighbours", 8)
    doc = " ".join(s for s in SENTENCES if s.endswith(" ."))
    ents = tagger.tag(doc)
    assert tagger.stats.windows == 4  # one row per sentence, each seeing 8 sub-tokens around it
    assert all(doc[e["start"]:e["end"]] == e["text"] for e in ents)
    plain = Tagger.from_pretrained(tiny_ner_dir, _tag_config())  # no run config: trained on sentences
    assert (plain.cfg.context, plain.cfg.context_size) == ("none", 64)
    save_config(replace(cfg, data={"context": "none"}), run / "config.yaml")
    assert Tagger.from_pretrained(run, _tag_config()).cfg.context == "none"


def test_context_views_label_each_token_by_the_mean_of_its_framings(tiny_ner_dir, tmp_path, monkeypatch):
    import shutil

    import flaxner.tagging.pipeline as pipeline
    from flaxner.config import ConfigError, load_config, save_config

    run = tmp_path / "run"
    shutil.copytree(tiny_ner_dir, run / "model")
    save_config(load_config("tiny", ["data.context=neighbours", "data.context_size=8",
                                     "data.context_views=[full,none]"]), run / "config.yaml")
    seen: list = []
    real = pipeline.entities_many
    monkeypatch.setattr(pipeline, "entities_many", lambda docs, *a: seen.extend(
        (d.pred.copy(), None if d.score is None else d.score.copy()) for d in docs) or real(docs, *a))
    doc = " ".join(s for s in SENTENCES if s.endswith(" ."))
    probs = {}
    for view in ("full", "none"):  # each framing alone, as probabilities of every label
        one = Tagger.from_pretrained(run, _tag_config(aggregation="average", context_views=(view,)))
        one.tag(doc)
        probs[view] = seen.pop()[0]
    assert probs["full"].shape == probs["none"].shape and probs["full"].ndim == 2
    assert (probs["full"].argmax(-1) != probs["none"].argmax(-1)).any()  # the framings disagree somewhere
    both = Tagger.from_pretrained(run, _tag_config())
    assert both.cfg.context_views == ("full", "none")  # the run's
    ents = both.tag(doc)
    pred, score = seen.pop()
    mean = (probs["full"] + probs["none"]) / 2
    top = np.sort(mean, -1)
    clear = top[:, -1] - top[:, -2] > 1e-4
    assert (pred[clear] == mean.argmax(-1)[clear]).all() and pred.dtype == np.int32
    np.testing.assert_allclose(score, mean.max(-1), atol=1e-5)
    assert both.stats.windows == 2 * one.stats.windows == 8  # each sentence once per view
    assert all(doc[e["start"]:e["end"]] == e["text"] for e in ents)
    with pytest.raises(ConfigError, match=r"tag.context_views \['full', 'none'\]: needs context neighbours, not none"):
        Tagger.from_pretrained(run, _tag_config(context="none", context_views=("full", "none")))
    assert Tagger.from_pretrained(run, _tag_config(context="none")).cfg.context_views == ("full",)


@pytest.mark.parametrize("override, message", [
    (dict(lookahead=0), "tag.lookahead: must be positive, got 0"),  # was an empty result
    (dict(prefetch=0), "tag.prefetch: must be positive, got 0"),  # was an unbounded queue
    (dict(max_length=600, buckets=(64, 1024)), "tag.max_length 600 is more than the model's max_position_embeddings"),
])
def test_a_bad_override_is_refused(tiny_ner_dir, override, message):
    from flaxner.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        Tagger.from_pretrained(tiny_ner_dir, **override)
