"""What the explore notebook shows: dataset and padding statistics, training curves, span-level error analysis. Plain
data in and out; the figures are in `flaxner.training.plots`, entities highlighted in HTML in `flaxner.tagging.display`
(the renderer `flaxner tag --format html` uses)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flaxner.config import Config, DataConfig, load_config, replace
from flaxner.configfile import CONFIG_DIR
from flaxner.data.batching import batch_order, bucket_for
from flaxner.data.labels import spans_from_tags
from flaxner.rundir import RunDir

MISSED = "missed"
SPURIOUS = "spurious"


def explore_config(run_dir: str | Path | None, config: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a run folder was trained with (its config.yaml, whose paths are absolute), else `config`, whose
    relative paths not found from here are looked up from the repository (tiny.yaml's tests/fixtures/tiny-bert,
    for a notebook started in notebooks/); dotted `overrides` on top."""
    saved = RunDir(run_dir).config if run_dir else None
    if saved and saved.is_file():
        return load_config(saved, list(overrides))
    cfg, root = load_config(config, list(overrides)), CONFIG_DIR.parent

    def fix(value: str) -> str:
        p = Path(value)
        return str(root / p) if value and not p.is_absolute() and not p.exists() and (root / p).exists() else value

    return replace(cfg, data={"source": fix(cfg.data.source)},
                   model={"name": fix(cfg.model.name), "tokenizer": fix(cfg.model.tokenizer)})


def encoded_split(cfg: Config, tokenizer, split: str):
    """A split encoded as training encodes it, with the run's label set (`data.labels`, else the data's own)."""
    from flaxner.data.splits import encode, load_split

    ds = load_split(cfg.data, split, labels=list(cfg.data.labels) or None)
    return encode(ds, tokenizer, cfg.data, ds.features["ner_tags"].feature.names)


def split_stats(ds, labels: Sequence[str] | None = None) -> dict:
    """Sentences, words and entities (in total and per type) of one `datasets.Dataset` split; tag ids name
    `labels` (default: the split's own ClassLabel names)."""
    labels = labels or ds.features["ner_tags"].feature.names
    tags_col = ds[:]["ner_tags"]
    per_type: Counter = Counter()
    words = 0
    for tags in tags_col:
        words += len(tags)
        per_type.update(typ for typ, _, _ in spans_from_tags([labels[t] for t in tags]))
    return {"sentences": len(tags_col), "tokens": words, "entities": sum(per_type.values()),
            "per_type": dict(sorted(per_type.items()))}


def dataset_stats(cfg: DataConfig, splits: Sequence[str] | None = None) -> dict[str, dict]:
    """`split_stats` of each split (default: the config's train split and those of its eval and test splits the
    data has), `cfg.limit` applied; any label set (`data.labels`, else the train split's tags)."""
    from flaxner.data.splits import load_dataset_splits

    if splits:
        ds, _ = load_dataset_splits(cfg, list(splits))
    else:
        ds, _ = load_dataset_splits(cfg, [cfg.train_split], [cfg.eval_split, cfg.test_split])
    return {name: split_stats(d) for name, d in ds.items()}


def stats_table(stats: dict[str, dict]) -> list[dict]:
    """One flat row per split (sentences, tokens, entities, then one column per type) for a table."""
    types = sorted({t for s in stats.values() for t in s["per_type"]})
    return [{"split": name, "sentences": s["sentences"], "tokens": s["tokens"], "entities": s["entities"],
             **{t: s["per_type"].get(t, 0) for t in types}} for name, s in stats.items()]


def bucket_costs(lengths: np.ndarray, batch_size: int, buckets: Sequence[int], seed: int = 0,
                 mode: str = "grouped") -> list[dict]:
    """Per bucket length, the batches of one training epoch padded to it: rows, real and padded sub-tokens, and
    the share of padding (the batches `flaxner.data.batching.iter_batches` builds for epoch 0)."""
    lengths = np.asarray(lengths)
    acc = {b: {"bucket": b, "batches": 0, "rows": 0, "real_tokens": 0, "padded_tokens": 0} for b in buckets}
    for idx in batch_order(lengths, batch_size, seed, 0, mode):
        row = acc[bucket_for(int(lengths[idx].max()), buckets)]
        row["batches"] += 1
        row["rows"] += len(idx)
        row["real_tokens"] += int(lengths[idx].sum())
        row["padded_tokens"] += batch_size * row["bucket"]
    out = [r for r in acc.values() if r["batches"]]
    for r in out:
        r["padding"] = 1 - r["real_tokens"] / r["padded_tokens"]
    return out


def epoch_curves(rows: list[dict]) -> dict[str, list[dict]]:
    """metrics.jsonl rows (`flaxner.training.export.read_metrics`) split into the logged training losses and the
    per-epoch evaluation scores (without the per-type breakdown), each in step order."""
    train = sorted(({k: r[k] for k in ("step", "epoch", "loss", "learning_rate") if k in r}
                    for r in rows if r.get("type") == "train"), key=lambda r: r["step"])
    evals = sorted(({k: v for k, v in r.items() if k not in ("type", "per_type")}
                    for r in rows if r.get("type") == "eval"), key=lambda r: r["step"])
    return {"train": train, "eval": evals}


@dataclass
class Confusion:
    """Span-level confusion of entity types: rows are gold types plus SPURIOUS (a predicted span with no gold span
    of the same boundaries), columns predicted types plus MISSED (a gold span with no predicted span of the same
    boundaries). counts[i, j] counts spans; the diagonal holds the exact matches seqeval scores."""

    types: list[str]
    counts: np.ndarray  # [len(types) + 1, len(types) + 1]
    rows: list[str] = field(init=False)
    cols: list[str] = field(init=False)

    def __post_init__(self):
        self.rows = [*self.types, SPURIOUS]
        self.cols = [*self.types, MISSED]

    def count(self, gold: str, pred: str) -> int:
        return int(self.counts[self.rows.index(gold), self.cols.index(pred)])


def confusion_matrix(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                     types: Sequence[str] | None = None) -> Confusion:
    """Match gold and predicted spans of each sentence by their word boundaries and count type pairs."""
    pairs: Counter = Counter()
    for gold, pred in zip(gold_tags, pred_tags, strict=True):
        g = {(a, b): t for t, a, b in spans_from_tags(gold)}
        p = {(a, b): t for t, a, b in spans_from_tags(pred)}
        pairs.update((t, p.get(k, MISSED)) for k, t in g.items())
        pairs.update((SPURIOUS, t) for k, t in p.items() if k not in g)
    if types is None:
        types = sorted({t for pair in pairs for t in pair} - {MISSED, SPURIOUS})
    conf = Confusion(list(types), np.zeros((len(types) + 1, len(types) + 1), dtype=np.int64))
    for (g, p), n in pairs.items():
        conf.counts[conf.rows.index(g), conf.cols.index(p)] += n
    return conf


def span_errors(gold: Sequence[str], pred: Sequence[str]) -> int:
    """Gold spans not predicted exactly (type and boundaries) plus predicted spans not in gold."""
    g, p = set(spans_from_tags(gold)), set(spans_from_tags(pred))
    return len(g ^ p)


def worst_sentences(tokens: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]],
                    pred_tags: Sequence[Sequence[str]], n: int = 10) -> list[dict]:
    """The `n` sentences with the most span errors (ties: in corpus order), with their gold and predicted
    spans as (type, words) and the index of the sentence in the split."""
    errors = [span_errors(g, p) for g, p in zip(gold_tags, pred_tags, strict=True)]
    order = sorted((i for i, e in enumerate(errors) if e), key=lambda i: (-errors[i], i))[:n]

    def spans(toks, tags):
        return [(t, " ".join(toks[a:b])) for t, a, b in spans_from_tags(tags)]

    return [{"index": i, "errors": errors[i], "tokens": list(tokens[i]), "gold_tags": list(gold_tags[i]),
             "pred_tags": list(pred_tags[i]), "gold": spans(tokens[i], gold_tags[i]),
             "pred": spans(tokens[i], pred_tags[i])} for i in order]


def subtoken_count(tokenizer, text: str) -> int:
    """Sub-tokens of `text` without specials (no warning past the model's length: that is the point here)."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def make_long_text(tokenizer, filler: str, tail: str, min_subtokens: int = 512) -> str:
    """`filler` repeated until the text exceeds `min_subtokens` sub-tokens, then `tail` (put an entity there to
    see that the tagger's windows reach the end of a long document)."""
    parts = []
    while subtoken_count(tokenizer, " ".join(parts)) <= min_subtokens:
        parts.append(filler)
    return " ".join([*parts, tail])
