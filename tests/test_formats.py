"""`flaxner tag --format`: every output format (flaxner/tagging/formats.py) says what the JSON lines say, read back
with each tool's own reader where one installs (spaCy's DocBin; flaxner's CoNLL reader; Label Studio's task shape),
resumes after a crash to what a clean run writes, and keeps the output policy (no clobber, no stdout or .gz for a
whole file)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from flaxner.data.labels import spans_from_tags
from flaxner.data.readers import read_conll
from flaxner.data.words import split_words, words_of
from flaxner.tagging import formats
from flaxner.tagging.reading import Record, TagInputError
from flaxner.tagging.writing import OutputWriter
from helpers import SENTENCES, corpus, read_jsonl, tag_config, write_jsonl

TEXTS = SENTENCES + corpus(40, seed=11) + ["  two  spaces\tand a tab\nand a newline  ", "Ünïcödé in Zürich 🗼 ."]


@pytest.fixture(scope="module")
def conll_tagger(tiny_ner_dir):
    from flaxner.tagging.tagger import Tagger

    return Tagger.from_pretrained(tiny_ner_dir, tag_config(words="conll"))


@pytest.fixture(scope="module")
def reference(conll_tagger, tmp_path_factory):
    """The corpus (with one bad line) and its JSON lines."""
    d = tmp_path_factory.mktemp("formats")
    src = write_jsonl(d / "c.jsonl", TEXTS)
    with open(src, "a") as f:
        f.write('{"text": 3}\n')
    conll_tagger.tag_file(str(src), str(d / "ref.jsonl"), progress=False)
    return src, read_jsonl(d / "ref.jsonl")


def _texts_and_entities(reference):
    return [(t, r["entities"]) for t, r in zip(TEXTS, reference[1]) if "error" not in r]


@pytest.mark.parametrize("seed", range(5))
def test_word_tags_mark_the_words_each_entity_covers(seed):
    """Entities on word boundaries come back from the CoNLL tags exactly (spans_from_tags as the oracle)."""
    rng = random.Random(seed)
    text = rng.choice(TEXTS[:len(SENTENCES)]) + " " + " ".join(rng.choice(TEXTS[0].split()) for _ in range(30))
    words = split_words(text)
    ents, k = [], 0
    while k < len(words):
        n = rng.choice([0, 0, 1, 2, 3])
        if n and k + n <= len(words):
            ents.append({"start": words[k][0], "end": words[k + n - 1][1], "label": rng.choice(["PER", "LOC"])})
        k += max(n, 1)
    rows = formats.word_tags(text, ents)
    assert [w for w, _ in rows] == words_of(text)
    got = [{"start": words[a][0], "end": words[b - 1][1], "label": t} for t, a, b in
           spans_from_tags([t for _, t in rows])]
    assert got == ents
    # an entity inside a word (tokenizer words) marks the word it touches
    assert formats.word_tags("in Zürich now", [{"start": 4, "end": 6, "label": "LOC"}])[1] == ("Zürich", "B-LOC")


@pytest.mark.parametrize("text", ["a  b", " lead", "trail ", "x\ny", "\t\n", "", "one", "a , b\n\n c  "])
def test_spacy_words_rebuild_the_text(text):
    words, spaces = formats.spacy_words(text)
    assert "".join(w + (" " if s else "") for w, s in zip(words, spaces)) == text
    assert all(w for w in words)


def test_conll_reads_back_with_the_same_words_and_entities(conll_tagger, reference, tmp_path):
    src, ref = reference
    out = tmp_path / "c.conll"
    s = conll_tagger.tag_file(str(src), str(out), progress=False, output_format="conll")
    assert s.lines == len(TEXTS) + 1 and s.errors == 1
    got = read_conll(out)
    want = [(t, e) for t, e in _texts_and_entities(reference) if words_of(t)]
    assert got.tokens == [words_of(t) for t, _ in want]
    for tags, (text, ents) in zip(got.tags, want):
        words = split_words(text)
        spans = [(words[a][0], words[b - 1][1], lab) for lab, a, b in spans_from_tags(tags)]
        assert spans == [(e["start"], e["end"], e["label"]) for e in ents]


def test_label_studio_tasks_hold_the_predictions(conll_tagger, reference, tmp_path):
    src, ref = reference
    out = tmp_path / "tasks.json"
    conll_tagger.tag_file(str(src), str(out), progress=False, output_format=formats.OutputSpec(
        "label-studio", model_version="run-7"))
    tasks = json.loads(out.read_text())
    want = _texts_and_entities(reference)
    assert len(tasks) == len(want)
    ids = set()
    for task, (text, ents) in zip(tasks, want):
        assert set(task) == {"data", "predictions"} and task["data"]["text"] == text
        (pred,) = task["predictions"]
        assert pred["model_version"] == "run-7"
        assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"], r["value"]["text"], r["score"])
                for r in pred["result"]] == [(e["start"], e["end"], [e["label"]], e["text"], e["score"])
                                             for e in ents]
        assert all(r["type"] == "labels" and (r["from_name"], r["to_name"]) == ("label", "text")
                   for r in pred["result"])
        assert pred.get("score") == (min(e["score"] for e in ents) if ents else None)
        ids.update(r["id"] for r in pred["result"])
    assert len(ids) == sum(len(e) for _, e in want)  # every region its own id, as Label Studio requires


def test_docbin_reads_back_in_spacy_with_the_same_texts(conll_tagger, reference, tmp_path):
    pytest.importorskip("spacy", reason="the spacy extra: pip install 'flaxner[spacy]'")
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    src, _ = reference
    out = tmp_path / "c.spacy"
    conll_tagger.tag_file(str(src), str(out), progress=False, output_format="spacy")
    docs = list(DocBin().from_disk(out).get_docs(Vocab()))
    want = _texts_and_entities(reference)
    assert [d.text for d in docs] == [t for t, _ in want]
    for doc, (_, ents) in zip(docs, want):
        assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == \
               [(e["start"], e["end"], e["label"]) for e in ents]
        assert list(doc.user_data["flaxner"]["scores"]) == [e["score"] for e in ents]  # msgpack: a tuple


def test_html_page_shows_every_entity_with_its_score(conll_tagger, reference, tmp_path):
    src, _ = reference
    out = tmp_path / "c.html"
    conll_tagger.tag_file(str(src), str(out), progress=False, output_format="html")
    page = out.read_text()
    want = [e for _, ents in _texts_and_entities(reference) for e in ents]
    titles = re.findall(r'<mark style="background:[^"]+;padding:0 2px;border-radius:3px" title="([^"]+)"', page)
    assert titles == [f"{e['label']} {e['score']:.3f}" for e in want]
    assert page.startswith("<!DOCTYPE html>") and "http" not in page  # nothing fetched from elsewhere
    assert page.count('class="doc"') == len(TEXTS) + 1 and "field &#x27;text&#x27; is a int" in page


@pytest.mark.parametrize("fmt", ["conll", "label-studio"])
def test_resume_after_a_crash_writes_what_a_clean_run_writes(conll_tagger, reference, tmp_path, monkeypatch, fmt):
    src, _ = reference
    clean, out = tmp_path / "clean", tmp_path / "crash"
    conll_tagger.tag_file(str(src), str(clean), progress=False, output_format=fmt)
    real_write, calls = OutputWriter.write, {"n": 0}

    def crashing_write(self, data, *lines):
        calls["n"] += 1
        if calls["n"] == 23:
            self.f.write(data[:3])  # a torn record
            raise KeyboardInterrupt
        real_write(self, data, *lines)

    monkeypatch.setattr(OutputWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        conll_tagger.tag_file(str(src), str(out), progress=False, commit_every=0.0, output_format=fmt)
    monkeypatch.setattr(OutputWriter, "write", real_write)
    assert not out.exists() and Path(f"{out}.part").exists()
    with pytest.raises(ValueError, match="--resume.*was written for"):  # the same output in another format
        conll_tagger.tag_file(str(src), str(out), progress=False, resume=True, output_format="jsonl")
    (tmp_path / "crash.0123456789ab.assembling").write_text("[")  # an assembly killed halfway (whole files)
    (tmp_path / "crash.mine.assembling").write_text("the user's")
    s = conll_tagger.tag_file(str(src), str(out), progress=False, resume=True, output_format=fmt)
    assert 0 < s.resumed_lines < s.lines == len(TEXTS) + 1
    assert _rounded(out.read_text()) == _rounded(clean.read_text())
    left = ["crash.mine.assembling"] + (["crash.0123456789ab.assembling"] if not formats.is_whole(fmt) else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clean", "crash", *left])
    with pytest.raises(TagInputError, match="exists; pass --overwrite"):
        conll_tagger.tag_file(str(src), str(out), progress=False, output_format=fmt)


def _rounded(text: str) -> str:
    """Scores to 3 decimals: a resumed run's batches differ, so its scores may in the last bits."""
    return re.sub(r'"score": (\d\.\d{3})\d*', r'"score": \1', text)


def test_whole_file_formats_refuse_stdout_gzip_and_a_missing_extra(monkeypatch):
    with pytest.raises(TagInputError, match="writes a whole file at the end: give -o FILE"):
        formats.check_spec(formats.OutputSpec("html"), "-")
    with pytest.raises(TagInputError, match="not written gzipped"):
        formats.check_spec(formats.OutputSpec("label-studio"), "out.json.gz")
    formats.check_spec(formats.OutputSpec("conll"), "out.conll.gz")  # a line format gzips as JSON lines do
    monkeypatch.setattr(formats.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TagInputError, match=r"needs spacy: pip install 'flaxner\[spacy\]'"):
        formats.check_spec(formats.OutputSpec("spacy"), "out.spacy")


def test_staged_lines_round_trip_every_record_kind():
    recs = [(Record(1, "a", "Peter here", {"id": "a", "text": "Peter here", "n": [1]}),
             [{"text": "Peter", "label": "PER", "start": 0, "end": 5, "score": 0.9}]),
            (Record(2, 2, None, error="line 2: not JSON"), None),
            (Record(3, 3, "x", warning="line 3: replaced"), [])]
    spec = formats.OutputSpec("conll", keep_fields=True)
    lines = [formats.staged_line(r, e, spec) for r, e in recs]
    for (rec, ents), d in zip(recs, formats.staged_records(lines)):
        back, back_ents = formats._record(d)
        assert (back.line, back.id, back.text, back.error, back.warning, back_ents) == \
               (rec.line, rec.id, rec.text, rec.error, rec.warning, ents)
        assert formats.jsonl_line(back, back_ents, spec) == formats.jsonl_line(rec, ents, spec)


def _same_output(fmt: str, got: Path, want: Path) -> None:
    """The same file, scores to 3 decimals (engines batch differently); a DocBin compared through spaCy."""
    if fmt != "spacy":
        assert _rounded(got.read_text()) == _rounded(want.read_text())
        return
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    def docs(p):
        return [(d.text, [(e.start_char, e.end_char, e.label_) for e in d.ents], d.user_data["flaxner"]["id"])
                for d in DocBin().from_disk(p).get_docs(Vocab())]

    assert docs(got) == docs(want)


def _formats() -> list[str]:
    import importlib.util

    return [f for f in formats.FORMATS if f != "jsonl" and (not formats.FORMATS[f].extra
                                                           or importlib.util.find_spec(formats.FORMATS[f].extra))]


@pytest.mark.slow
def test_processes_write_every_format_as_one_process_and_resume(tiny_ner_dir, reference, tmp_path, capsys):
    """`--processes 2` writes each format as one process does (whole files assembled from the shards' staged
    records); an interrupted run (one shard finished) resumes to the same file; an existing output is refused."""
    from flaxner.cli import main

    src, _ = reference
    # float32, one window a row: packed rows and `mixed` may round a score differently beside other neighbours
    common = ["--model", str(tiny_ner_dir), "--no-progress", "--max-length", "64", "--stride", "16", "--dtype", "float32",
              "--pack-length", "0"]
    for fmt in _formats():
        one, two, three = (tmp_path / f"{k}-{fmt}.out" for k in ("one", "two", "three"))
        assert main(["tag", str(src), "-o", str(one), "--format", fmt, *common]) == 0
        assert main(["tag", str(src), "-o", str(two), "--format", fmt, "--processes", "2", *common]) == 0
        _same_output(fmt, two, one)
        assert main(["tag", str(src), "-o", str(two), "--format", fmt, "--processes", "2", *common]) == 2
        assert "exists; pass --overwrite" in capsys.readouterr().err
        # shard 2 of 2 finished before an interruption, as its child writes it; shard 1 never started
        staged = ["--staged"] if formats.is_whole(fmt) else []
        assert main(["tag", str(src), "-o", f"{three}.shard1of2", "--shard", "1/2", "--format", fmt, *staged,
                     *common]) == 0
        assert main(["tag", str(src), "-o", str(three), "--format", fmt, "--processes", "2", "--resume",
                     *common]) == 0
        assert "1 of 2 shard processes started (1 already complete)" in capsys.readouterr().err
        _same_output(fmt, three, one)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}-{f}.out" for f in _formats()
                                                               for k in ("one", "two", "three"))
