"""What a run's data holds, before any model loads (spaCy's `debug data`): the label inventory, entity counts per
type and split, sentences, documents and words, and the types too rare to learn."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flaxner.data.labels import spans_from_tags

log = logging.getLogger(__name__)


@dataclass
class SplitReport:
    sentences: int
    documents: int
    words: int
    words_per_sentence: dict  # min, median, p95, max
    entities: dict[str, int] = field(default_factory=dict)  # per type, by name


@dataclass
class DataReport:
    labels: tuple[str, ...]
    splits: dict[str, SplitReport]
    rare: dict[str, int]          # types seen fewer than `min_count` times in the train split
    unseen: list[str]             # types of the inventory never seen in the train split
    min_count: int

    def table(self) -> str:
        """Entity counts per type (rows) and split (columns), then sentence statistics, as plain text."""
        types = sorted({t for s in self.splits.values() for t in s.entities} |
                       {lab[2:] for lab in self.labels if lab != "O"})
        names = list(self.splits)
        w = max([4, *map(len, types)])
        lines = [f"{'type':<{w}}  " + "  ".join(f"{n:>10}" for n in names)]
        for t in types:
            lines.append(f"{t:<{w}}  " + "  ".join(f"{self.splits[n].entities.get(t, 0):>10}" for n in names))
        for what in ("sentences", "documents", "words"):
            lines.append(f"{what:<{w}}  " + "  ".join(f"{getattr(self.splits[n], what):>10}" for n in names))
        for n in names:
            q = self.splits[n].words_per_sentence
            lines.append(f"{n}: words per sentence min {q['min']}, median {q['median']}, p95 {q['p95']}, "
                         f"max {q['max']}")
        return "\n".join(lines)


def split_report(tags: Sequence[Sequence[str]], tokens: Sequence[Sequence[str]],
                 documents: Sequence[int] | None) -> SplitReport:
    """The counts of one split: `tags` are IOB2 names per word."""
    lens = np.array([len(t) for t in tokens], dtype=np.int64)
    ents: Counter = Counter(typ for sent in tags for typ, _, _ in spans_from_tags(list(sent)))
    q = {"min": 0, "median": 0, "p95": 0, "max": 0} if not len(lens) else {
        "min": int(lens.min()), "median": int(np.median(lens)), "p95": int(np.percentile(lens, 95)),
        "max": int(lens.max())}
    docs = len(set(documents)) if documents is not None and len(documents) else len(tokens)
    return SplitReport(len(tokens), docs, int(lens.sum()), q, dict(sorted(ents.items())))


def data_report(datasets: dict, labels: Sequence[str], train_split: str, min_count: int = 10) -> DataReport:
    """The report of the splits `load_dataset_splits` returned (`datasets`: split -> Dataset with tokens, ner_tags
    as ids into `labels`, and document)."""
    splits = {}
    for name, ds in datasets.items():
        cols = ds[:]
        tags = [[labels[t] for t in sent] for sent in cols["ner_tags"]]
        splits[name] = split_report(tags, cols["tokens"], cols.get("document"))
    types = sorted({lab[2:] for lab in labels if lab != "O"})
    train = splits[train_split].entities if train_split in splits else {}
    rare = {t: train[t] for t in types if 0 < train.get(t, 0) < min_count}
    unseen = [t for t in types if not train.get(t)]
    return DataReport(tuple(labels), splits, rare, unseen, min_count)


def log_report(report: DataReport, train_split: str) -> None:
    """The inventory with its train counts on one line, and a warning naming each type too rare to learn."""
    train = report.splits.get(train_split)
    counts = ", ".join(f"{t} {n}" for t, n in (train.entities.items() if train else ()))
    log.info("labels: %s; entities in %r: %s", " ".join(report.labels), train_split, counts or "none")
    for t, n in report.rare.items():
        log.warning("entity type %s occurs only %d time(s) in %r (fewer than data.rare_type_count=%d): a typo "
                    "in a tag, or too few examples to learn it", t, n, train_split, report.min_count)
    for t in report.unseen:
        log.warning("entity type %s is in the label set but never occurs in %r", t, train_split)


def print_report(d) -> None:
    """`flaxner data`: the report of a DataConfig's splits on stdout, then a warning line per rare or unseen type."""
    from flaxner.data.splits import load_dataset_splits

    ds, labels = load_dataset_splits(d, [d.train_split], [d.eval_split, d.test_split])
    report = data_report(ds, labels, d.train_split, d.rare_type_count)
    print(f"labels ({len(labels)}): {' '.join(labels)}\n{report.table()}")
    for t, n in report.rare.items():
        print(f"warning: {t} occurs only {n} time(s) in {d.train_split!r} (a typo in a tag, or too few to learn)")
    for t in report.unseen:
        print(f"warning: {t} is in the label set but never occurs in {d.train_split!r}")
