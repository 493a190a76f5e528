"""`flaxner data` and the label report logged at the start of training."""

import json
import logging

from flaxner.cli import main


def _folder(tmp_path):
    rows = [{"tokens": ["Peter", "Smith", "visits", "Paris"], "ner_tags": ["B-PER", "I-PER", "O", "B-LOC"]},
            {"tokens": ["Anna", "in", "Rome"], "ner_tags": ["B-PERSON", "O", "B-LOC"]},  # a typo'd tag
            {"tokens": ["Bob", "left"], "ner_tags": ["B-PER", "O"], "document_id": 3}]
    for split in ("train", "valid"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def test_data_command_prints_counts_per_type_and_split_and_names_rare_types(tmp_path, capsys):
    folder = _folder(tmp_path)
    assert main(["data", "--config", "tiny", f"data.source={folder}", "data.rare_type_count=2"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln and not ln.startswith(("labels", "warn"))}
    assert lines["PER"] == ["2", "2"] and lines["LOC"] == ["2", "2"] and lines["PERSON"] == ["1", "1"]
    assert lines["sentences"] == ["3", "3"] and lines["documents"] == ["3", "3"]
    assert "warning: PERSON occurs only 1 time(s) in 'train'" in out and "warning: PER occurs" not in out


def test_training_logs_the_inventory_with_counts(tmp_path, caplog):
    from flaxner.config import DataConfig
    from flaxner.data.report import data_report, log_report
    from flaxner.data.splits import load_dataset_splits

    ds, labels = load_dataset_splits(DataConfig(source=str(_folder(tmp_path))), ["train"])
    with caplog.at_level(logging.INFO, logger="flaxner.data.report"):
        log_report(data_report(ds, labels, "train", 2), "train")
    assert "entities in 'train': LOC 2, PER 2, PERSON 1" in caplog.text
    assert "entity type PERSON occurs only 1 time(s)" in caplog.text
