"""Every data format and tagging scheme reads back to the same sentences and IOB2 tags; the label inventory
comes from the data; bad data is refused at its file:line."""

from __future__ import annotations

import json
import logging
import random

import pytest
from seqeval.metrics import f1_score

from flaxner.config import DataConfig
from flaxner.data.splits import DataError, describe_source, encode, load_dataset_splits, load_split
from flaxner.data.labels import CONLL_LABELS, detect_scheme, from_iob2, iob2_inventory, spans_from_tags, to_iob2
from flaxner.data.words import words_of


@pytest.fixture(scope="module")
def gold():
    """The first 400 sentences of the packaged CoNLL-2003 validation split, as word and IOB2 tag lists."""
    ds = load_split(DataConfig(limit=400), "validation")
    cols = ds[:]
    return cols["tokens"], [[CONLL_LABELS[t] for t in tags] for tags in cols["ner_tags"]]


def _write_conll(path, tokens, tags, sep=" ", extra=()):
    with open(path, "w", encoding="utf-8") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for ws, ts in zip(tokens, tags):
            for w, t in zip(ws, ts):
                f.write(sep.join([w, *extra, t]) + "\n")
            f.write("\n")
    return path


def _read(cfg, split="train", **kw):
    ds, labels = load_dataset_splits(cfg, [split], **kw)
    cols = ds[split][:]
    return cols["tokens"], [[labels[t] for t in tags] for tags in cols["ner_tags"]], labels


def _perturbed(tags, seed=0):
    """Predictions: gold tags with some entity types and boundaries changed."""
    rng = random.Random(seed)
    out = []
    for ts in tags:
        p = list(ts)
        for k, t in enumerate(p):
            if t != "O" and rng.random() < 0.2:
                p[k] = rng.choice(["O", "B-PER", "I-ORG", "B-LOC"])
        out.append(p)
    return out


@pytest.mark.parametrize("scheme", ["iob1", "bioes", "io"])
def test_schemes_read_back_as_iob2_with_the_same_f1(tmp_path, gold, scheme):
    tokens, tags = gold
    conv = [from_iob2(t, scheme) for t in tags]
    has_b = any(t.startswith("B-") for ts in conv for t in ts)
    assert detect_scheme(conv) == ("io" if scheme == "iob1" and not has_b else scheme)  # IOB1 without B- is IO
    _write_conll(tmp_path / "train.txt", tokens, conv, sep="\t", extra=("NNP", "I-NP"))
    got_tokens, got_tags, _ = _read(DataConfig(source=str(tmp_path)))
    assert got_tokens == tokens
    # IO cannot mark where one of two adjacent same-type entities ends: they read back as one span.
    expected = [to_iob2(from_iob2(t, "io"), "io") for t in tags] if scheme == "io" else tags
    assert got_tags == expected
    if scheme != "io":
        pred = _perturbed(tags)
        assert f1_score([from_iob2(t, scheme) for t in tags], [from_iob2(p, scheme) for p in pred]) == \
            pytest.approx(f1_score(tags, pred))


def test_io_merges_only_adjacent_same_type_spans(gold):
    _, tags = gold
    merged = sum(1 for t in tags for (a, b) in zip(spans_from_tags(t), spans_from_tags(t)[1:])
                 if a[0] == b[0] and a[2] == b[1])
    lost = sum(len(spans_from_tags(t)) - len(spans_from_tags(to_iob2(from_iob2(t, "io"), "io"))) for t in tags)
    assert lost == merged


def test_detect_scheme():
    assert detect_scheme([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]) == "iob1"
    assert detect_scheme([["I-PER", "O", "I-LOC"]]) == "io"
    assert detect_scheme([["B-PER", "I-PER", "O", "I-LOC"]]) == "iob2"  # a stray I- in IOB2 data
    assert detect_scheme([["O"]]) == "iob2"


def test_bilou_reads_as_bioes():
    assert to_iob2(["U-PER", "O", "B-ORG", "L-ORG"], "bioes") == ["B-PER", "O", "B-ORG", "I-ORG"]
    assert detect_scheme([["B-PER", "L-PER"]]) == "bioes"


def test_jsonl_words_and_spans_read_back_the_same(tmp_path, gold):
    tokens, tags = gold
    with open(tmp_path / "train.jsonl", "w") as f:
        for ws, ts in zip(tokens, tags):
            f.write(json.dumps({"tokens": ws, "ner_tags": ts}) + "\n")
    assert _read(DataConfig(source=str(tmp_path)))[:2] == (tokens, tags)
    # Spans over the words joined by spaces; kept: the sentences the word splitter recovers (nearly all).
    keep = [i for i, ws in enumerate(tokens) if words_of(" ".join(ws)) == ws]
    assert len(keep) >= 0.99 * len(tokens)
    d = tmp_path / "spans"
    d.mkdir()
    with open(d / "train.jsonl", "w") as f:
        for i in keep:
            starts = [sum(len(w) + 1 for w in tokens[i][:k]) for k in range(len(tokens[i]))]
            ents = [{"start": starts[a], "end": starts[b - 1] + len(tokens[i][b - 1]), "label": typ}
                    for typ, a, b in spans_from_tags(tags[i])]
            f.write(json.dumps({"text": " ".join(tokens[i]), "entities": ents}) + "\n")
    got = _read(DataConfig(source=str(d)))
    assert got[:2] == ([tokens[i] for i in keep], [tags[i] for i in keep])


def test_span_forms_and_off_boundary_spans_split_the_word(tmp_path, caplog):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"text": "Acme Corp. hired Bob.", "ents": [{"start": 0, "end": 10, "label": "ORG"},
                                                   {"start": 17, "end": 20, "label": "PER"}]},  # spaCy
        {"text": "See NewYork now", "label": [[4, 7, "LOC"]]},  # Doccano; "New" inside "NewYork"
        {"text": "In Paris", "spans": [[3, 8, "LOC"]]},
    ]) + "\n")
    with caplog.at_level(logging.WARNING):
        tokens, tags, labels = _read(DataConfig(train_file=str(p)))
    assert tokens == [["Acme", "Corp.", "hired", "Bob", "."], ["See", "New", "York", "now"], ["In", "Paris"]]
    assert tags == [["B-ORG", "I-ORG", "O", "B-PER", "O"], ["O", "B-LOC", "O", "O"], ["O", "B-LOC"]]
    assert labels == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    assert "1 entity spans did not fall on word boundaries" in caplog.text and "train.jsonl:2" in caplog.text


def test_overlapping_spans_name_the_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"text": "x"}) + "\n" +
                 json.dumps({"text": "New York City", "entities": [[0, 8, "LOC"], [4, 13, "LOC"]]}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: spans \[0, 8\) 'LOC' and \[4, 13\) 'LOC' overlap"):
        _read(DataConfig(train_file=str(p)))


def test_label_inference_order_and_overrides(tmp_path):
    rows = [(["Apple", "sells", "iPhones", "in", "France"], ["B-ORG", "O", "B-PRODUCT", "O", "B-GPE"]),
            (["Tim", "Cook"], ["B-PER", "I-PER"])]
    _write_conll(tmp_path / "train.txt", *zip(*rows))
    cfg = DataConfig(source=str(tmp_path))
    assert _read(cfg)[2] == ("O", "B-GPE", "I-GPE", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-PRODUCT",
                             "I-PRODUCT")
    given = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-GPE", "I-GPE", "B-PRODUCT", "I-PRODUCT", "B-EVENT",
             "I-EVENT")
    assert _read(DataConfig(source=str(tmp_path), labels=given))[2] == given
    _, tags, labels = _read(cfg, labels=given[::-1])
    assert labels == given[::-1] and tags == [list(t) for _, t in rows]
    # CoNLL-2003's tag set keeps the hub's order wherever it comes from.
    assert iob2_inventory(set(CONLL_LABELS)) == CONLL_LABELS


def test_unseen_tag_in_validation_names_file_line_and_way_out(tmp_path):
    _write_conll(tmp_path / "train.txt", [["Bob", "runs"]], [["B-PER", "O"]])
    _write_conll(tmp_path / "dev.txt", [["Bob", "in", "Rome"]], [["B-PER", "O", "B-LOC"]])
    cfg = DataConfig(source=str(tmp_path), eval_split="dev")
    with pytest.raises(DataError, match=r"dev.txt:5: tag 'B-LOC' is not in the label set .*data\.labels"):
        load_dataset_splits(cfg, ["train", "dev"])
    ds, labels = load_dataset_splits(DataConfig(source=str(tmp_path), labels=("O", "B-PER", "I-PER", "B-LOC")),
                                     ["train", "valid"], optional=["test"])
    assert set(ds) == {"train", "valid"} and labels == ("O", "B-PER", "I-PER", "B-LOC")
    with pytest.raises(DataError, match="no 'test' split"):
        load_dataset_splits(cfg, ["train", "test"])


def test_columns_prefix_and_bad_tags(tmp_path):
    (tmp_path / "train.txt").write_text("B-PER\ten:Bob\tNNP\nO\ten:runs\tVB\n\n")
    tokens, tags, _ = _read(DataConfig(source=str(tmp_path), token_column=1, tag_column=0, token_prefix="en:"))
    assert tokens == [["Bob", "runs"]] and tags == [["B-PER", "O"]]
    (tmp_path / "train.txt").write_text("Bob PER\nruns O\n\n")
    with pytest.raises(DataError, match=r"train.txt:1: tag 'PER' is neither O nor B-/I-"):
        _read(DataConfig(source=str(tmp_path)))


def test_encoding_errors_name_the_line(tmp_path):
    (tmp_path / "train.txt").write_bytes("Bob B-PER\n\nJos\u00e9 B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train.txt:3: not valid utf-8 .*data.encoding"):
        _read(DataConfig(source=str(tmp_path)))
    assert _read(DataConfig(source=str(tmp_path), encoding="latin-1"))[0] == [["Bob"], ["Jos\u00e9"]]


def test_integer_tags_need_names(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"tokens": ["Bob", "runs"], "ner_tags": [1, 0]}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: tags are integer ids .*data.labels"):
        _read(DataConfig(train_file=str(p)))
    assert _read(DataConfig(train_file=str(p), labels=("O", "B-PER", "I-PER")))[1] == [["B-PER", "O"]]


def test_saved_hf_dataset_with_other_columns(tmp_path):
    import datasets

    feats = datasets.Features({"words": datasets.Sequence(datasets.Value("string")),
                               "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-LOC", "I-LOC",
                                                                                     "B-PER", "I-PER"]))})
    split = datasets.Dataset.from_dict({"words": [["Bob", "in", "New", "York"]], "tags": [[3, 0, 1, 2]]}, feats)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(tmp_path / "hf"))
    cfg = DataConfig(source=str(tmp_path / "hf"), tokens_column="words", tags_column="tags")
    ds, labels = load_dataset_splits(cfg, ["train", "dev"])
    assert labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")  # the ClassLabel's order
    assert ds["dev"][0]["tokens"] == ["Bob", "in", "New", "York"] and ds["dev"][0]["ner_tags"] == [3, 0, 1, 2]
    assert "hf (a local datasets folder)" == describe_source(cfg)


def test_a_label_set_without_misc_builds_the_model_it_names(tmp_path, gold, tiny_cfg, tiny_tokenizer):
    import jax.numpy as jnp

    from flaxner.models.loading import make_model

    tokens, tags = gold
    no_misc = [[t if not t.endswith("MISC") else "O" for t in ts] for ts in tags]
    _write_conll(tmp_path / "train.txt", tokens[:60], no_misc[:60])
    ds, labels = load_dataset_splits(DataConfig(source=str(tmp_path)), ["train"])
    assert labels == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")  # types by name
    enc = encode(ds["train"], tiny_tokenizer, tiny_cfg.data, labels)
    assert max(int(x.max()) for x in enc.labels) == len(labels) - 1
    model, params = make_model(tiny_cfg.model, labels, seed=0, vocab_size=len(tiny_tokenizer))
    logits = model(jnp.asarray(enc.input_ids[0][None]), params=params, train=False).logits
    assert logits.shape[-1] == len(labels) and model.config.id2label == dict(enumerate(labels))


def test_conll_docstart_starts_a_document(tmp_path):
    from flaxner.data.readers import read_conll

    p = tmp_path / "d.conll"
    p.write_text("-DOCSTART- -X- O O\n\nA x B-PER\n\nB x O\n\n-DOCSTART- -X- O O\n\nC x O\n", encoding="utf-8")
    s = read_conll(p)
    assert s.tokens == [["A"], ["B"], ["C"]] and s.documents == [0, 0, 1]


def test_jsonl_documents_from_the_document_column_and_spans_lines(tmp_path):
    import json

    from flaxner.data.readers import group_sentences, read_conll, read_jsonl

    p = tmp_path / "d.jsonl"
    rows = [{"tokens": ["A"], "ner_tags": ["O"], "document_id": "x"}, {"tokens": ["B"], "ner_tags": ["O"], "document_id": "x"},
            {"tokens": ["C"], "ner_tags": ["O"], "document_id": 7}, {"text": "D E", "entities": []},
            {"tokens": ["F"], "ner_tags": ["O"]}, {"tokens": ["G"], "ner_tags": ["O"], "document_id": 7}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_jsonl(p).documents == [0, 0, 1, 2, 3, 4]  # a new document wherever the id changes
    c = tmp_path / "c.conll"
    c.write_text("A x O\n\nB x O\n\nC x O\n", encoding="utf-8")
    assert group_sentences(read_conll(c), 2).documents == [0, 0, 1]
    marked = read_conll(c)
    marked.documents = [5, 5, 5]
    assert group_sentences(marked, 2).documents == [5, 5, 5]  # documents the data has are kept


@pytest.mark.parametrize("suffix", ["jsonl", "conll"])
def test_a_training_line_over_the_cap_is_named_not_read(tmp_path, suffix):
    import gzip

    from flaxner.config import DataConfig
    from flaxner.data.readers import DataError, read_conll, read_jsonl

    body = ('{"tokens": ["A"], "ner_tags": ["O"]}\n' + '{"tokens": ["' + "x" * 5000 + '"], "ner_tags": ["O"]}\n'
            if suffix == "jsonl" else "A x O\n\n" + "y" * 5000 + " x O\n")
    p = tmp_path / f"d.{suffix}.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(body)
    read = read_jsonl if suffix == "jsonl" else read_conll
    with pytest.raises(DataError, match=rf"d\.{suffix}\.gz:\d: the line is over data.max_line_bytes=1000"):
        read(p, DataConfig(max_line_bytes=1000))
    assert len(read(p, DataConfig(max_line_bytes=0)).tokens) == 2


def test_empty_spans_are_dropped_and_boolean_offsets_refused(tmp_path, caplog):
    import json
    import logging

    from flaxner.data.readers import DataError, read_jsonl

    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"text": "Tim Cook visits Paris", "entities": [[0, 8, "PER"], [5, 5, "LOC"]]}) + "\n",
                 encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        s = read_jsonl(p)
    assert s.tags == [["B-PER", "I-PER", "O", "O"]] and "1 empty entity spans" in caplog.text
    p.write_text(json.dumps({"text": "Tim Cook", "entities": [[True, 3, "PER"]]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s.jsonl:1: a span must be"):
        read_jsonl(p)
