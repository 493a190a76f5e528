"""The annotation tools' exports read as training data (flaxner/data/annotations.py through readers.read_file):
Label Studio JSON and JSON-MIN, Prodigy, Doccano and spaCy DocBin files, built in each tool's documented export shape
(DocBin with spaCy itself), read to the words and IOB2 tags the spans mean; bad records named with their shape."""

from __future__ import annotations

import json
import logging

import pytest

from flaxner.config import DataConfig
from flaxner.data.readers import DataError, read_file

TEXT = "Peter Blackburn lives in Brussels ."
SPANS = [(0, 15, "PER"), (25, 33, "LOC")]
WORDS = ["Peter", "Blackburn", "lives", "in", "Brussels", "."]
TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]


def ls_result(spans, text=TEXT, prefix="r"):
    """Label Studio's `result` items for text spans (guide/task_format: from_name/to_name/type/value)."""
    return [{"id": f"{prefix}{k}", "from_name": "label", "to_name": "text", "type": "labels", "origin": "manual",
             "value": {"start": a, "end": b, "text": text[a:b], "labels": [lab]}} for k, (a, b, lab) in
            enumerate(spans)]


def ls_task(i, text, annotations):
    return {"id": i, "data": {"text": text}, "project": 3, "created_at": "2024-05-01T10:00:00Z",
            "annotations": annotations, "predictions": [], "drafts": [], "meta": {}}


def ls_annotation(i, spans, text=TEXT, cancelled=False):
    return {"id": i, "completed_by": 1, "result": ls_result(spans, text, f"a{i}-"), "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2024-05-01T10:00:00Z", "lead_time": 4.2, "task": 1}


def _read(path, **kw):
    s = read_file(path, DataConfig(**kw))
    return s.tokens, s.tags


def test_label_studio_json_export_reads_the_first_annotation_not_cancelled(tmp_path):
    tasks = [ls_task(1, TEXT, [ls_annotation(10, [(0, 5, "ORG")], cancelled=True), ls_annotation(11, SPANS),
                               ls_annotation(12, [(25, 33, "ORG")])]),
             ls_task(2, "Nothing here .", [ls_annotation(20, [])]),
             ls_task(3, "Not labelled yet .", [])]
    path = tmp_path / "project-3-at-2024.json"
    path.write_text(json.dumps(tasks, indent=2))
    tokens, tags = _read(path)
    assert tokens == [WORDS, ["Nothing", "here", "."]] and tags == [TAGS, ["O"] * 3]
    assert _read(path, format="label-studio", annotation=2)[1][0] == ["O"] * 4 + ["B-ORG", "O"]


def test_label_studio_json_min_export(tmp_path):
    # convert_to_json_min: the task's data, its id, the from_name's spans (type dropped), the annotator's fields;
    # one record per annotation, newest first
    recs = [{"text": TEXT, "id": 7, "label": [{"start": a, "end": b, "text": TEXT[a:b], "labels": [lab]}
                                              for a, b, lab in SPANS],
             "annotator": 1, "annotation_id": 30, "created_at": "x", "updated_at": "x", "lead_time": 2.0},
            {"text": TEXT, "id": 7, "label": [{"start": 0, "end": 5, "text": "Peter", "labels": ["ORG"]}],
             "annotator": 2, "annotation_id": 29, "created_at": "x", "updated_at": "x", "lead_time": 2.0},
            {"text": "Nothing here .", "id": 8, "annotator": 1, "annotation_id": 31},
            {"text": "Nothing here .", "id": 8, "annotator": 2, "annotation_id": 32,
             "label": [{"start": 0, "end": 7, "text": "Nothing", "labels": ["ORG"]}]}]
    path = tmp_path / "min.json"
    path.write_text(json.dumps(recs))
    tokens, tags = _read(path)
    assert tags == [TAGS, ["O"] * 3] and tokens[0] == WORDS
    assert _read(path, format="label-studio-min", annotation=1)[1][0] == ["B-ORG"] + ["O"] * 5


def test_prodigy_spans_with_tokens_and_rejected_answers(tmp_path):
    tokens = [{"text": w, "start": TEXT.index(w), "end": TEXT.index(w) + len(w), "id": k, "ws": True}
              for k, w in enumerate(WORDS)]
    spans = [{"start": 0, "end": 15, "token_start": 0, "token_end": 1, "label": "PER"},
             {"start": 25, "end": 33, "token_start": 4, "token_end": 4, "label": "LOC"}]
    base = {"text": TEXT, "tokens": tokens, "_input_hash": 1, "_task_hash": 2, "_view_id": "ner_manual"}
    lines = [{**base, "spans": spans, "answer": "accept"}, {**base, "spans": spans[:1], "answer": "reject"},
             {**base, "spans": [], "answer": "ignore"}]
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _read(path) == ([WORDS], [TAGS])
    bad = {**base, "spans": [{**spans[1], "token_start": 3}], "answer": "accept"}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"ner.jsonl:1: span \[25, 33\) 'LOC' has token_start 3.*disagree"):
        read_file(path)


def test_doccano_label_lists(tmp_path):
    path = tmp_path / "admin.jsonl"
    path.write_text(json.dumps({"id": 1, "text": TEXT, "label": [[a, b, lab] for a, b, lab in SPANS],
                                "Comments": []}) + "\n")
    assert _read(path) == ([WORDS], [TAGS])
    assert _read(path, format="doccano") == ([WORDS], [TAGS])


def test_spacy_docbin_from_spacy_itself(tmp_path):
    spacy = pytest.importorskip("spacy", reason="the spacy extra: pip install 'flaxner[spacy]'")
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    docs = []
    for text, spans in ((TEXT, SPANS), ("Nothing here.", [])):
        doc = nlp(text)
        doc.ents = [doc.char_span(a, b, lab) for a, b, lab in spans]
        docs.append(doc)
    path = tmp_path / "train.spacy"
    DocBin(docs=docs).to_disk(path)
    s = read_file(path)
    assert s.tokens == [WORDS, ["Nothing", "here", "."]] and s.tags == [TAGS, ["O"] * 3]
    assert s.documents == [0, 1] and s.where(1) == f"{path}:doc 1"
    path.write_bytes(b"not a docbin")
    with pytest.raises(DataError, match="not a spaCy DocBin"):
        read_file(path)


@pytest.mark.parametrize("task, match", [
    ({"data": {"a": 1}, "annotations": []}, r"task 0: no 'text' string \(keys \['a'\]\); expected a task"),
    ({"data": {"text": TEXT}, "annotations": [{"result": [{"value": {"start": 0, "end": 5, "labels": "PER"}}]}]},
     r"task 0: a span must be \{start, end, labels: \[LABEL\]\}"),
    ({"data": {"text": TEXT}, "annotations": [{"result": [{"value": {"start": 0, "end": 5, "text": "Pete",
                                                                      "labels": ["PER"]}}]}]},
     r"task 0: span \[0, 5\) says 'Pete' but the text there is 'Peter'"),
    ({"data": {"text": TEXT}, "annotations": [{"result": [{"value": {"start": 0, "end": 5,
                                                                      "labels": ["PER", "ORG"]}}]}]},
     "one label per span"),
])
def test_bad_label_studio_tasks_name_the_task_and_the_shape(tmp_path, task, match):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task]))
    with pytest.raises(DataError, match=match):
        read_file(path)


def test_a_record_of_no_known_shape_lists_the_shapes(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"body": TEXT}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:1: expected 'tokens'.*label-studio: a task.*prodigy"):
        read_file(path)
    path.write_text(json.dumps({"text": TEXT, "spans": [], "answer": "reject"}) + "\n"
                    + json.dumps({"text": TEXT, "spans": [], "answer": "accept"}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert len(read_file(path).tokens) == 1
    assert "1 records skipped: prodigy answer 'reject'" in caplog.text


def test_a_format_named_in_the_config_is_insisted_on(tmp_path):
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps({"text": TEXT, "entities": [{"start": 0, "end": 5, "label": "PER"}]}) + "\n")
    assert _read(path)[1] == [["B-PER", "O", "O", "O", "O", "O"]]  # auto: the generic spans form
    with pytest.raises(DataError, match=r"spans.jsonl:1: 'data' must be an object; expected a task \{\"data\""):
        read_file(path, DataConfig(format="label-studio"))
    with pytest.raises(DataError, match=r"x.jsonl:1: no 'text' string.*expected \{\"text\": \.\.\., \"label\""):
        read_file(_write(tmp_path / "x.jsonl", {"body": TEXT, "title": "T"}), DataConfig(format="label-studio-min"))


def _write(path, rec):
    path.write_text(json.dumps(rec) + "\n")
    return path
