"""The data side of a run's set-up: the encoded splits, the loss normalisation they imply, the check that a resumed
run's config matches the one it was started with, and the run files they decide (`save_run_files`, the only
write here)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaxner.config import Config, ConfigError, DataConfig, TagConfig, TrainConfig, absolute_paths, load_config, \
    save_config, to_dict
from flaxner.data.batching import EpochPlan, epoch_rows, plan_epochs
from flaxner.data.report import data_report, log_report
from flaxner.data.sentences import SentenceModel, fit_columns
from flaxner.data.splits import Encoded, encode, load_dataset_splits
from flaxner.data.labels import IGNORE

log = logging.getLogger(__name__)

# Keys a resumed run may change: they do not alter the steps it takes or the weights it reaches.
RESUME_HARMLESS = ("name", "train.log_every", "train.save_every", "train.keep_checkpoints", "train.compile_workers",
                   "train.compilation_cache", "train.eval_test", "train.report_to", "tag.",
                   # where the run is launched (per launch, never saved), not what it computes
                   "train.distributed", "train.coordinator_address", "train.num_processes", "train.process_id")
# The model card shows the exported model's tags of this many validation sentences: the first ones with an entity
# and at most CARD_WORDS words (a card stays short to read).
CARD_SAMPLES, CARD_WORDS = 5, 64


@dataclass
class Split:
    """One encoded split and its word-level gold tags."""

    name: str  # the data's split name (e.g. validation)
    enc: Encoded
    gold: list[list[str]]
    samples: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # the card's sentences: index -> words
    sentences: SentenceModel | None = None  # the train split's: sentence starts learnt from its documents


def card_samples(split: Split, loop) -> list[dict]:
    """The card's sample sentences (index, tokens, gold_tags) with the best evaluation's pred_tags (`loop` a
    `LoopState`); none where the checkpoint a run resumed from predates them."""
    if len(loop.best_samples) != len(split.samples):
        return []
    return [{"index": i, "tokens": words, "gold_tags": split.gold[i], "pred_tags": list(pred)}
            for (i, words), pred in zip(split.samples.items(), loop.best_samples, strict=True)]


def resolved_loss_norm(tc: TrainConfig) -> str:
    """`train.loss_norm` with "auto" decided by the batching."""
    if tc.loss_norm == "auto":
        return "dataset" if tc.batching == "grouped" else "batch"
    return tc.loss_norm


def loss_denominator(tc: TrainConfig, enc: Encoded) -> float | None:
    """None for `loss_norm: batch` (each batch's mean, as the Trainer); for "dataset", the mean number of
    labelled tokens per batch over an epoch. Length-grouped batches hold from a few labelled tokens to hundreds;
    a per-batch mean weighs a token of a short-sentence batch many times one of a long-sentence batch, while
    dividing by this constant weighs every token the same, as random batches do on average. "auto" is dataset
    for grouped batches and batch for random ones."""
    if resolved_loss_norm(tc) == "batch":
        return None
    labelled = sum(int(np.sum(np.asarray(lab) != IGNORE)) for lab in enc.labels)
    return labelled / -(-len(enc.input_ids) // tc.batch_size)  # over the epoch's batches


def run_plan(cfg: Config, enc: Encoded, packs_rows: bool, multiple: int = 1, devices: int = 1) -> EpochPlan:
    """The run's epoch plan (`plan_epochs`) of the training rows `enc` as each epoch sees them (`epoch_rows`), its
    sentences packed (`data.pack_length`) only for a model that keeps segments apart (`packs_rows`); logs the
    padding it costs."""
    data, tc = cfg.data, cfg.train
    lengths = [epoch_rows(enc, data.context_dropout, tc.seed, e).lengths for e in range(tc.epochs)]
    if data.pack_length and not packs_rows:
        log.info("data.pack_length %d: this model mixes neighbouring tokens outside attention, so it cannot "
                 "share rows; one sentence a row", data.pack_length)
        data = dataclasses.replace(data, pack_length=0)
    plan = plan_epochs(lengths, data, cfg.train, multiple, devices)
    packed = f", sentences packed in rows of {plan.pack_length}" if plan.pack_length else ""
    log.info("training batches: %d shapes, %.1f%% padding in epoch 1%s", len(plan.shapes()),
             100 * plan.padding_stats(lengths[0])["padding"], packed)
    return plan


def check_resume_config(cfg: Config, saved_path: Path) -> None:
    """Refuse a resume whose config differs from the run's saved one in a key that changes the training."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(to_dict(absolute_paths(load_config(saved_path)))), flat(to_dict(absolute_paths(cfg)))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                    and not any(k == h or (h.endswith(".") and k.startswith(h)) for h in RESUME_HARMLESS)
                    and not (k == "data.labels" and not new.get(k)))  # saved as inferred; empty means infer
    if differ:
        raise ConfigError(f"--resume: the config differs from {saved_path} in {', '.join(differ)} "
                          f"({'; '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in differ)}); "
                          f"resume with the run's own config, or start a new run")


def _needed(cfg: Config) -> tuple[list[str], list[str]]:
    """(the splits a run requires, those it scores when the data has them), as `train.eval_test` says."""
    d, et = cfg.data, cfg.train.eval_test
    return [d.train_split, d.eval_split] + ([d.test_split] if et is True else []), \
        [d.test_split] if et == "auto" else []


def check_inputs(cfg: Config, resume: bool = False) -> None:
    """What `flaxner train` checks before JAX, datasets and transformers start (15-20 s): the `train.report_to`
    writers are installed, and a fresh run's local split files read as `load_splits` will read them (a missing
    folder or file, a malformed line, an unknown tag or an empty split is its one-line error at once). The shipped
    CoNLL-2003 is not read twice; hub and save_to_disk data are read later; a resumed run's labels are its own."""
    from flaxner.training.reporting import check_reporters

    check_reporters(cfg.train)
    d = cfg.data
    if resume or (d.source == "builtin" and not any((d.train_file, d.validation_file, d.test_file))):
        return
    _check_only(d, *_needed(cfg))


def _check_only(data: DataConfig, splits: list[str], optional: list[str] = ()) -> None:
    """`load_dataset_splits(check_only=True)` without its log lines (the real read logs what it finds)."""
    quiet = logging.getLogger("flaxner.data")
    level, _ = quiet.level, quiet.setLevel(logging.ERROR)
    try:
        load_dataset_splits(data, splits, optional, check_only=True)
    finally:
        quiet.setLevel(level)


def check_split(model: str | Path, split: str, data=None) -> None:
    """`flaxner eval`'s check before its model loads: the split is in the data (`data`, else the run's) and its
    local file reads; a split the data lacks is one line listing those it has."""
    saved = Path(model) / "config.yaml"
    _check_only(data or (load_config(saved).data if saved.is_file() else DataConfig()), [split])


def load_splits(cfg: Config, tokenizer, labels: list[str] | None, sentences: bool = True
                ) -> tuple[dict[str, Split], tuple[str, ...]]:
    """The encoded train and eval splits and, as `train.eval_test` says, test; and the label inventory. An empty
    split is refused here, before any step. `sentences`: learn the train split's sentence starts (`Split.sentences`;
    only the host that saves the run's files needs them)."""
    d, et = cfg.data, cfg.train.eval_test
    roles = {"train": d.train_split, "eval": d.eval_split}
    ds, labels = load_dataset_splits(d, *_needed(cfg), labels)
    log_report(data_report(ds, labels, d.train_split, d.rare_type_count), d.train_split)
    if et is not False:
        if d.test_split in ds:
            roles["test"] = d.test_split
        else:
            log.info("data.source %s has no %r split: the test evaluation is skipped", d.source, d.test_split)
    out = {}
    for role, name in roles.items():
        cols = ds[name][:]  # read the columns once, for the gold tags and the encoding
        gold = [[labels[t] for t in tags] for tags in cols["ner_tags"]]
        shown = [i for i, g in enumerate(gold) if len(g) <= CARD_WORDS and any(t != "O" for t in g)][:CARD_SAMPLES] \
            if role == "eval" else []
        out[role] = Split(name, encode(cols, tokenizer, d, labels), gold, {i: list(cols["tokens"][i]) for i in shown},
                          fit_sentences(cols) if role == "train" and sentences else None)
    return out, tuple(labels)


def fit_sentences(cols) -> SentenceModel | None:
    """The sentence starts the tagger's rules miss, learnt from a split's documents (consecutive sentences with one
    `document` id), None for data without documents or with nothing to learn (`flaxner.data.sentences.fit`)."""
    model = fit_columns(cols)
    if model is not None:
        log.info("sentence starts without a mark: learnt from %(documents)d training documents (%(starts)d of "
                 "%(gaps)d gaps the rules leave)", model.fitted)
    return model


def save_run_files(cfg: Config, labels: Sequence[str], splits: dict[str, Split], rd) -> None:
    """The run's config.yaml with the label inventory it uses and its tagging defaults, so that eval and tag read
    exactly those, and its learnt sentence starts (`sentences.json`) when it has any."""
    save_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, labels=tuple(labels)),
                                    tag=tagging_defaults(cfg.tag, splits["train"].enc)), rd.config)
    if splits["train"].sentences is not None:
        splits["train"].sentences.save(rd.sentences)


def tagging_defaults(tag: TagConfig, train: Encoded) -> TagConfig:
    """The run's `tag:` section as saved: `segment_length` 0 becomes the 99th percentile of the sub-tokens its
    training rows predicted, so that the tagger windows a long stretch of text into rows like those."""
    if tag.segment_length or train.own_lengths is None or not len(train.own_lengths):
        return tag
    return dataclasses.replace(tag, segment_length=max(int(np.percentile(train.own_lengths, 99)), 1))
