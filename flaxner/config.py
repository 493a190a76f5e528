"""Typed, frozen run configuration and all its validation; read from YAML files with `base:` inheritance and dotted
overrides (`flaxner.configfile`)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from flaxner.configfile import (ConfigError, as_options, build_dataclass, check_fields, parse_override,  # noqa: F401
                                read_yaml, resolve_config_path)

# Every choice list, declared once: fields are typed with these, validated by membership, argparse's choices=.
Scheme = Literal["auto", "iob2", "iob1", "bioes", "bilou", "io"]
ModelDtype = Literal["float32", "bfloat16", "float16", "mixed"]  # mixed: flaxner.models.matmul
TagDtype = Literal["auto", ModelDtype]
Batching = Literal["grouped", "random"]
LossNorm = Literal["auto", "batch", "dataset"]
EvalTest = Literal["auto", True, False]
Aggregation = Literal["first", "average", "max"]
Words = Literal["conll", "tokenizer"]
# What a model row may see (flaxner.data.rows); training builds the first two, tagging all ("auto": the run's).
TrainContext = Literal["none", "neighbours"]
Context = Literal[TrainContext, "document"]
TagContext = Literal["auto", Context]
ContextView = Literal["full", "left", "right", "none"]  # a row's context kept: both sides, one, or none
DataFormat = Literal["auto", "conll", "jsonl", "label-studio", "label-studio-min", "prodigy", "doccano", "spacy"]
# Options of `flaxner tag` that are not TagConfig fields (output formats: flaxner.tagging.formats).
InputFormat = Literal["auto", "jsonl", "txt"]
OutputFormat = Literal["jsonl", "conll", "label-studio", "spacy", "html"]
OnError = Literal["record", "fail"]
Engine = Literal["local", "ray"]
# Where training metrics go besides metrics.jsonl (flaxner.training.reporting).
ReportTo = Literal["tensorboard", "mlflow", "wandb"]


def choices(alias: Any) -> tuple:
    """The values of a Literal alias, in declaration order (argparse `choices=`)."""
    return typing.get_args(alias)


def _checked(default: Any, ok: Any, says: str) -> Any:
    """A field whose value must satisfy `ok`; `says` what it may be, for the error."""
    return field(default=default, metadata={"ok": ok, "says": says})


def _min(default: Any, low: float, says: str = "") -> Any:
    """A field whose value must be at least `low` (NaN is refused too)."""
    return _checked(default, lambda v: v >= low, says or ("positive" if low == 1 else f"at least {low}"))


_STEPS = "0 (off) or a step count"
_WORKERS = "-1 (auto), 0 (off) or a thread count"
_LENGTH = "at least 3 (the two special tokens and one sub-token)"
_VIEWS = "distinct views out of full, left, right, none"


@dataclass(frozen=True)
class DataConfig:
    # "builtin" (the compressed CoNLL-2003 copy in the package); a folder of CoNLL column or JSON Lines files
    # (train/valid/test); a folder written by `datasets.save_to_disk`; or a hub dataset name (wikiann).
    source: str = "builtin"
    # The hub dataset's configuration (wikiann: the language, `en`).
    dataset_config: str = ""
    # Split files named directly (CoNLL columns, or JSON Lines for .jsonl/.json); when any is set, splits come
    # from these files only.
    train_file: str = ""
    validation_file: str = ""
    test_file: str = ""
    format: DataFormat = "auto"  # what the files are (auto: by name and each record's keys; docs/data.md)
    annotation: int = _min(-1, -1, "-1 (a Label Studio task's first not cancelled) or an index")
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    # The label inventory in id order (IOB2 names); empty: from the data (see flaxner.data.splits.load_dataset_splits).
    labels: tuple[str, ...] = ()
    # The tagging scheme of the files: auto (detected and logged), iob2, iob1, bioes (also BILOU) or io.
    scheme: Scheme = "auto"
    # CoNLL columns: which one holds the word and which the tag (negative: from the end).
    token_column: int = 0
    tag_column: int = -1
    token_prefix: str = ""  # stripped from every word that starts with it (WikiANN's export writes `en:word`)
    # Word and tag columns of HF datasets and keys of JSON Lines words/tags records.
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    encoding: str = "utf-8"
    # A longer line of a training file is an error naming it, read no further (memory stays bounded); 0: no cap.
    max_line_bytes: int = _min(10_000_000, 0, "0 (no cap) or a byte count")
    max_length: int = _min(512, 3, _LENGTH)
    # Padded lengths a batch may take; a batch is padded to the smallest one that fits its longest sentence.
    buckets: tuple[int, ...] = (16, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512)
    # > 0: training pads to this many lengths fitted to the run's own batches (least padding over all epochs),
    # followed by the `buckets` above them; 0: `buckets` as given.
    fit_buckets: int = _min(12, 0, "0 (off) or a count of lengths")
    # > 0: a training or evaluation batch's sentences share rows of this length (flaxner.data.packing); 0: off.
    pack_length: int = _min(0, 0, "0 (off) or a row length")
    label_all_tokens: bool = False
    limit: int = _min(0, 0, "0 (all sentences) or a count")  # sentences per split, for quick runs and tests
    # What a row sees besides its sentence (flaxner.data.rows): none, or neighbours: up to `context_size`
    # sub-tokens of the sentence's document on each side, unlabelled. Tagging and evaluation follow the run's.
    context: TrainContext = "none"
    context_size: int = _min(64, 0, "0 or more sub-tokens")
    # Training rows only (neighbours): each row's left and right context are each left out with this probability,
    # redrawn every epoch from the seed (flair's context_dropout); evaluation and tagging rows keep theirs.
    context_dropout: float = _checked(0.0, lambda v: 0 <= v <= 1, "in [0, 1]")
    # Evaluation and tagging rows (neighbours): each sentence is read once per view and each word takes the label of
    # its mean probabilities over them (the views context_dropout trains on; flaxner.data.batching.view_rows).
    context_views: tuple[ContextView, ...] = _checked(("full",), lambda v: len(set(v)) == len(v) > 0, _VIEWS)
    # The document id of a JSON Lines words record or a dataset row (consecutive sentences with one id are one
    # document); CoNLL files mark documents with -DOCSTART-.
    document_column: str = "document_id"
    # > 0: data without documents groups this many consecutive sentences into one (spaCy's converter uses 10).
    group_sentences: int = _min(0, 0, "0 (off) or a count")
    # An entity type seen fewer times than this in the train split is warned about by name (a typo'd tag?).
    rare_type_count: int = _min(10, 0, "0 (off) or a count")


@dataclass(frozen=True)
class ModelConfig:
    # A hub name (bert-base-multilingual-cased) or a local HF folder; "minilm" is the offline packaged MiniLM.
    name: str = "bert-base-multilingual-cased"
    # Read PyTorch weights (model.safetensors, pytorch_model.bin) before flax_model.msgpack when a folder has both.
    from_pt: bool = False
    dtype: ModelDtype = "float32"
    # Set to build a randomly initialised BERT of this shape instead of loading weights (tests, speed work).
    random_init: bool = False
    hidden_size: int = _min(0, 0, "0 (the model's) or a size")
    num_layers: int = _min(0, 0, "0 (the model's) or a count")
    num_heads: int = _min(0, 0, "0 (the model's) or a count")
    intermediate_size: int = _min(0, 0, "0 (the model's) or a size")
    tokenizer: str = ""
    # true: the encoder layers as one scanned block, so XLA compiles one layer (quicker compiles for deep models,
    # slower steps on CPU: docs/benchmarks.md, "Own BERT"); false: unrolled, one copy per layer.
    scan_layers: bool = False
    # Recompute each layer's activations in the backward pass (less memory for large batches, ~1/3 more compute).
    remat: bool = False


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = _checked(3e-5, lambda v: v > 0, "positive")
    batch_size: int = _min(16, 1)
    eval_batch_size: int = _min(16, 1)
    epochs: int = _min(4, 1)
    adam_b1: float = _checked(0.9, lambda v: 0 <= v < 1, "in [0, 1)")
    adam_b2: float = _checked(0.999, lambda v: 0 <= v < 1, "in [0, 1)")
    adam_eps: float = _min(1e-8, 0, "0 or more")
    weight_decay: float = _min(0.0, 0, "0 (off) or more")
    # Linear warm-up over warmup_steps optimizer steps, or over this fraction of them (set one, or neither).
    warmup_steps: int = _min(0, 0, _STEPS)
    warmup_ratio: float = _checked(0.0, lambda v: 0 <= v < 1, "in [0, 1)")
    grad_accum: int = _min(1, 1)  # micro-batches of batch_size per optimizer step; the loss: their mean
    max_grad_norm: float = _min(1.0, 0, "0 (no clipping) or more")  # the global norm clipped to
    seed: int = 42  # any integer (JAX's PRNGKey takes it as is)
    # "grouped": length-grouped batches reshuffled every epoch; "random": plain shuffled batches as the seed run.
    batching: Batching = "grouped"
    # Loss divisor: "batch" = labelled tokens of the batch (the Trainer's mean); "dataset" = mean labelled tokens
    # per batch over the epoch, so every token weighs the same in length-grouped batches too; "auto" = dataset
    # for grouped batches, batch for random ones (the seed run exactly).
    loss_norm: LossNorm = "auto"
    max_steps: int = _min(0, 0, _STEPS)  # stop after this many optimizer steps (0: all epochs); smoke tests
    save_every: int = _min(500, 0, _STEPS)  # a checkpoint every this many steps (0: at each epoch's end only)
    keep_checkpoints: int = _min(2, 1)
    log_every: int = _min(20, 1)
    # Evaluate on validation every this many optimizer steps as well as after every epoch (0: epochs only).
    eval_every: int = _min(0, 0, _STEPS)
    # Stop when this many evaluations in a row did not improve the best validation F1 (0: never).
    patience: int = _min(0, 0, "0 (off) or a count of evaluations")
    # Metrics written beside metrics.jsonl, by process 0: tensorboard (the `tensorboard` extra) in <run>/tensorboard.
    report_to: tuple[ReportTo, ...] = ()
    # Score the best epoch on the test split: "auto" when the data has one (else one log line), true (a missing
    # test split is an error before training), false.
    eval_test: EvalTest = "auto"
    compilation_cache: str = "~/.cache/flaxner/jax"
    # Threads that compile the run's train and evaluation shapes ahead of their first step; 0: compile each on
    # first use; -1: auto (1 on CPU, up to 8 beside an accelerator).
    compile_workers: int = _min(-1, -1, _WORKERS)
    # Multi-host: jax.distributed.initialize(coordinator_address, num_processes, process_id); unset ("", 0, -1)
    # lets JAX detect them (SLURM, Open MPI, Kubernetes, cloud TPU). Launch settings: not saved with the run.
    distributed: bool = False
    coordinator_address: str = ""
    num_processes: int = _min(0, 0, "0 (detect) or a process count")
    process_id: int = _min(-1, -1, "-1 (detect) or this process's index")
    distributed_timeout: int = _min(300, 1, "a number of seconds, 1 or more")  # for all processes to join
    # Hold only the embedding rows of ids in the run's data in the optimizer; exact when weight_decay is 0.
    compact_vocab: bool = True


@dataclass(frozen=True)
class TagConfig:
    batch_size: int = _min(32, 1)
    max_length: int = _min(512, 3, _LENGTH)
    # Sub-tokens shared by neighbouring windows; below max_length - 2.
    stride: int = _min(128, 0, "0 or more")
    aggregation: Aggregation = "first"
    lookahead: int = _min(2048, 1)  # documents read ahead and sorted by length
    buckets: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 384, 512)
    # Padded tokens per batch: short windows go many to a batch, long ones few; 0 = always batch_size rows.
    batch_tokens: int = _min(2048, 0, "0 (batch_size rows) or more")
    # Windows of at most this many positions share rows of this length (flaxner.tagging.packing); 0: one a row.
    pack_length: int = _min(64, 0, "0 (off) or a row length")
    # "auto": bfloat16 on accelerators; CPU: mixed with AMX (flaxner.models.matmul), else float32.
    dtype: TagDtype = "auto"
    prefetch: int = _min(4, 1)  # batches tokenized ahead of the device
    compilation_cache: str = "~/.cache/flaxner/jax"
    # Threads compiling the batch shapes ahead of their first batch; 0: on first use; -1: auto (none on CPU).
    compile_workers: int = _min(-1, -1, _WORKERS)
    # Words the tagger reads labels from: "conll" splits text as CoNLL-2003 was tokenized (flaxner.data.words, the
    # words training saw); "tokenizer" uses the tokenizer's pre-tokenizer words (as HF's pipeline does).
    words: Words = "conll"
    # What a row may see (flaxner.data.rows): "auto" follows the run's data.context; "none" tags each sentence of
    # a text on its own, as a model trained on single sentences saw it; "neighbours" adds up to context_size
    # sub-tokens of the text on each side; "document": windows run across sentences (up to max_length).
    context: TagContext = "auto"
    # Sub-tokens of context on each side for "neighbours"; 0: the run's data.context_size.
    context_size: int = _min(0, 0, "0 (the run's data.context_size) or more sub-tokens")
    context_views: tuple[ContextView, ...] = _checked((), lambda v: len(set(v)) == len(v), _VIEWS)  # (): the run's
    # Contexts none and neighbours: the most sub-tokens a row predicts, one sentence's worth (a longer sentence,
    # or text without sentence marks, is windowed at this length). 0: max_length; training records the 99th
    # percentile of its sentences' lengths here, the rows its model learnt on.
    segment_length: int = _min(0, 0, "0 (max_length) or a sub-token count")
    # Contexts none and neighbours, a run with learnt sentence starts (sentences.json): a text is cut into sentences
    # at each of these probabilities of a start, and each token labelled by its mean over the cuts (one: one cut).
    sentence_thresholds: tuple[float, ...] = _checked(
        (0.1, 0.3, 0.5, 0.7, 0.9), lambda v: len(set(v)) == len(v) and all(0 < t < 1 for t in v),
        "distinct probabilities between 0 and 1 (none: the model's own)")
    # JSONL: consecutive lines with one value of this field are one document for context (docs/tagging.md); "": off.
    document_field: str = ""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tag: TagConfig = field(default_factory=TagConfig)
    name: str = "run"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a config file (or the defaults), apply dotted overrides, and validate every key and type."""
    raw: dict = read_yaml(resolve_config_path(path)) if path is not None else {}
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    cfg = build_dataclass(Config, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every field of every section (type, choices, range), then the checks across fields."""
    d = cfg.data
    for name in ("data", "model", "train"):
        check_fields(getattr(cfg, name), name)
    _check_buckets(d.buckets, d.max_length, "data")
    if d.labels and (len(set(d.labels)) != len(d.labels) or "O" not in d.labels):
        raise ConfigError(f"data.labels: must list distinct tags including 'O', got {list(d.labels)}")
    for key, on in (("context_dropout", d.context_dropout), ("context_views", d.context_views != ("full",))):
        if on and d.context != "neighbours":
            raise ConfigError(f"data.{key} {getattr(d, key)}: needs data.context: neighbours, not {d.context}")
    validate_tag(cfg.tag)
    _validate_launch(cfg.train)
    if cfg.train.warmup_steps and cfg.train.warmup_ratio:
        raise ConfigError(f"train.warmup_steps ({cfg.train.warmup_steps}) and train.warmup_ratio "
                          f"({cfg.train.warmup_ratio}) are both set: set one")


def validate_tag(tc: TagConfig) -> None:
    """A TagConfig on its own (the model's limits are `check_positions`): the CLI and the Tagger call this on
    a config with overrides applied."""
    check_fields(tc, "tag")
    _check_buckets(tc.buckets, tc.max_length, "tag")
    if tc.stride >= tc.max_length - 2:
        raise ConfigError(f"tag.stride: must be below tag.max_length - 2 = {tc.max_length - 2}, got {tc.stride}")


def check_positions(key: str, max_length: int, max_positions: int) -> None:
    """Refuse windows longer than the model's position embeddings (JAX would clamp the positions silently)."""
    if max_length > max_positions:
        raise ConfigError(f"{key} {max_length} is more than the model's max_position_embeddings {max_positions}")


def _check_buckets(buckets: tuple[int, ...], max_length: int, where: str) -> None:
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise ConfigError(f"{where}.buckets: must be strictly increasing positive lengths, got {list(buckets)}")
    if buckets[-1] < max_length:
        raise ConfigError(f"{where}.buckets: the largest bucket {buckets[-1]} must be >= {where}.max_length "
                          f"{max_length}")


def _validate_launch(t: TrainConfig) -> None:
    if t.num_processes and t.process_id >= t.num_processes:
        raise ConfigError(f"train.process_id: {t.process_id} is not below train.num_processes={t.num_processes}")
    if t.coordinator_address and ":" not in t.coordinator_address:
        raise ConfigError(f"train.coordinator_address: expected HOST:PORT (process 0's host), "
                          f"got {t.coordinator_address!r}")
    given = [k for k, unset in (("coordinator_address", ""), ("num_processes", 0), ("process_id", -1))
             if getattr(t, k) != unset]
    if given and not t.distributed:
        raise ConfigError(f"train.{given[0]} is set but train.distributed is false: set train.distributed=true "
                          f"(the --coordinator-address/--num-processes/--process-id flags do)")


def to_dict(cfg: Config) -> dict:
    """The config as plain YAML-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# Per-launch settings, not saved with a run: a resume may start on other hosts, each reading process 0's config.yaml.
LAUNCH_KEYS = ("coordinator_address", "num_processes", "process_id", "distributed_timeout")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config so a later `flaxner tag` or `--resume` rebuilds the same run."""
    recipe = replace(cfg, train={k: TrainConfig.__dataclass_fields__[k].default for k in LAUNCH_KEYS})
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))


def absolute_paths(cfg: Config) -> Config:
    """`cfg` with its local data and model paths made absolute, so that a run's saved config works from any folder
    (`flaxner eval`, the notebook); hub names and paths that do not exist stay as written."""
    def fix(value: str) -> str:
        p = Path(value).expanduser()
        return str(p.resolve()) if value and value != "builtin" and p.exists() else value

    d, m = cfg.data, cfg.model
    return dataclasses.replace(
        cfg, data=dataclasses.replace(d, source=fix(d.source), train_file=fix(d.train_file),
                                      validation_file=fix(d.validation_file), test_file=fix(d.test_file)),
        model=dataclasses.replace(m, name=fix(m.name), tokenizer=fix(m.tokenizer)))


def replace(cfg: Config, **sections: Any) -> Config:
    """Copy of `cfg` with some fields of some sections replaced: replace(cfg, train={"epochs": 1})."""
    changes = {sec: dataclasses.replace(getattr(cfg, sec), **f) if isinstance(f, dict) else f
               for sec, f in sections.items()}
    return dataclasses.replace(cfg, **changes)

