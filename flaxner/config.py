"""Typed, frozen run configuration: YAML files with `base:` inheritance plus dotted overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _config_dir() -> Path:
    """The packaged configs (the repo's configs/ folder, shipped as `flaxner.configs`)."""
    import importlib

    try:  # a namespace package (no __init__.py): its folder is on __path__
        paths = [Path(p) for p in importlib.import_module("flaxner.configs").__path__]
    except ModuleNotFoundError:  # a source tree that was never installed
        paths = []
    return next((p for p in paths if (p / "base.yaml").is_file()), Path(__file__).resolve().parent.parent / "configs")


CONFIG_DIR = _config_dir()


# What a model row may see around the words it predicts (flaxner.data.rows explains each); training builds rows
# of the first two, tagging of all three.
CONTEXTS = ("none", "neighbours", "document")
TRAIN_CONTEXTS = ("none", "neighbours")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


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
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    # The label inventory in id order (IOB2 names); empty: from the data (see flaxner.data.splits.load_dataset_splits).
    labels: tuple[str, ...] = ()
    # The tagging scheme of the files: auto (detected and logged), iob2, iob1, bioes (also BILOU) or io.
    scheme: str = "auto"
    # CoNLL columns: which one holds the word and which the tag (negative: from the end).
    token_column: int = 0
    tag_column: int = -1
    # Stripped from every word that starts with it (WikiANN's export writes `en:word`).
    token_prefix: str = ""
    # Word and tag columns of HF datasets and keys of JSON Lines words/tags records.
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    encoding: str = "utf-8"
    # A longer line of a training file is an error naming it, read no further (memory stays bounded); 0: no cap.
    max_line_bytes: int = 10_000_000
    max_length: int = 512
    # Padded lengths a batch may take; a batch is padded to the smallest one that fits its longest sentence.
    buckets: tuple[int, ...] = (16, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512)
    # > 0: training pads to this many lengths fitted to the run's own batches (least padding over all epochs),
    # followed by the `buckets` above them; 0: `buckets` as given.
    fit_buckets: int = 12
    label_all_tokens: bool = False
    # Cap on sentences per split, for quick runs and tests; 0 means all.
    limit: int = 0
    # What a row sees besides its sentence (flaxner.data.rows): none, or neighbours: up to `context_size`
    # sub-tokens of the sentence's document on each side, unlabelled. Tagging and evaluation follow the run's.
    context: str = "none"
    context_size: int = 64
    # The document id of a JSON Lines words record or a dataset row (consecutive sentences with one id are one
    # document); CoNLL files mark documents with -DOCSTART-.
    document_column: str = "document_id"
    # > 0: data without documents groups this many consecutive sentences into one (spaCy's converter uses 10).
    group_sentences: int = 0
    # An entity type seen fewer times than this in the train split is warned about by name (a typo'd tag?).
    rare_type_count: int = 10


@dataclass(frozen=True)
class ModelConfig:
    # A hub name (bert-base-multilingual-cased) or a local HF folder; "minilm" is the offline packaged MiniLM.
    name: str = "bert-base-multilingual-cased"
    # Read PyTorch weights (model.safetensors, pytorch_model.bin) before flax_model.msgpack when a folder has both.
    from_pt: bool = False
    dtype: str = "float32"
    # Set to build a randomly initialised BERT of this shape instead of loading weights (tests, speed work).
    random_init: bool = False
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    intermediate_size: int = 0
    tokenizer: str = ""
    # true: the encoder layers as one scanned block, so XLA compiles one layer (quicker compiles for deep models,
    # slower steps on CPU: docs/benchmarks.md, "Own BERT"); false: unrolled, one copy per layer.
    scan_layers: bool = False
    # Recompute each layer's activations in the backward pass (less memory for large batches, ~1/3 more compute).
    remat: bool = False


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 3e-5
    batch_size: int = 16
    eval_batch_size: int = 16
    epochs: int = 4
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 42
    # "grouped": length-grouped batches reshuffled every epoch; "random": plain shuffled batches as the seed run.
    batching: str = "grouped"
    # Loss divisor: "batch" = labelled tokens of the batch (the Trainer's mean); "dataset" = mean labelled tokens
    # per batch over the epoch, so every token weighs the same in length-grouped batches too; "auto" = dataset
    # for grouped batches, batch for random ones (the seed run exactly).
    loss_norm: str = "auto"
    # Stop after this many optimizer steps (0: run all epochs); for smoke tests.
    max_steps: int = 0
    # Save a checkpoint every this many steps (0: only at each epoch's end).
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 20
    # Score the best epoch on the test split: "auto" when the data has one (else one log line), true (a missing
    # test split is an error before training), false.
    eval_test: typing.Literal["auto", True, False] = "auto"
    compilation_cache: str = "~/.cache/flaxner/jax"
    # Threads that compile the run's train and evaluation shapes ahead of their first step; 0: compile each on
    # first use; -1: auto (1 on CPU, up to 8 beside an accelerator).
    compile_workers: int = -1
    # Multi-host: jax.distributed.initialize(coordinator_address, num_processes, process_id); unset ("", 0, -1)
    # lets JAX detect them (SLURM, Open MPI, Kubernetes, cloud TPU). Launch settings: not saved with the run.
    distributed: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    # Hold only the embedding rows of ids in the run's data in the optimizer; exact when weight_decay is 0.
    compact_vocab: bool = True


@dataclass(frozen=True)
class TagConfig:
    batch_size: int = 32
    max_length: int = 512
    stride: int = 128
    aggregation: str = "first"
    lookahead: int = 2048
    buckets: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 384, 512)
    # Padded tokens per batch: short windows go many to a batch, long ones few; 0 = always batch_size rows.
    batch_tokens: int = 2048
    # "auto": bfloat16 on accelerators, float32 on CPU.
    dtype: str = "auto"
    # Batches tokenized ahead of the device.
    prefetch: int = 4
    compilation_cache: str = "~/.cache/flaxner/jax"
    # Threads compiling the batch shapes ahead of their first batch; 0: on first use; -1: auto (none on CPU).
    compile_workers: int = -1
    # Words the tagger reads labels from: "conll" splits text as CoNLL-2003 was tokenized (flaxner.data.words, the
    # words training saw); "tokenizer" uses the tokenizer's pre-tokenizer words (as HF's pipeline does).
    words: str = "conll"
    # What a row may see (flaxner.data.rows): "auto" follows the run's data.context; "none" tags each sentence of
    # a text on its own, as a model trained on single sentences saw it; "neighbours" adds up to context_size
    # sub-tokens of the text on each side; "document": windows run across sentences (up to max_length).
    context: str = "auto"
    # Sub-tokens of context on each side for "neighbours"; 0: the run's data.context_size.
    context_size: int = 0
    # Contexts none and neighbours: the most sub-tokens a row predicts, one sentence's worth (a longer sentence,
    # or text without sentence marks, is windowed at this length). 0: max_length; training records the 99th
    # percentile of its sentences' lengths here, the rows its model learnt on.
    segment_length: int = 0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tag: TagConfig = field(default_factory=TagConfig)
    name: str = "run"


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check `value` against a dataclass field type, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            raise ConfigError(f"{where}: expected one of {', '.join(str(a).lower() for a in allowed)}, got {value!r}")
        return value
    if origin is tuple:
        (inner, _) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {inner.__name__}, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    if typ in (int, float, str) and not isinstance(value, typ):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        typ = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {value!r}")
            kwargs[name] = _build(typ, value, key)
        else:
            kwargs[name] = _coerce(value, typ, key)
    return cls(**kwargs)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or the name of a packaged config (`tiny`, `configs/tiny.yaml`)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config file not found: {path}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: `base:` loop through {[str(s) for s in seen]}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    return _merge(_read_yaml(resolve_config_path(base_path), seen + (path,)), raw)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=5e-5` -> (["train", "learning_rate"], 5e-05), the value read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.learning_rate=5e-5")
    key, _, text = item.partition("=")
    value = yaml.safe_load(text) if text.strip() else ""
    # YAML 1.1 reads 5e-5 as a string; accept it as the float it obviously is.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        except ValueError:
            pass
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a config file (or the defaults), apply dotted overrides, and validate every key and type."""
    raw: dict = {}
    if path is not None:
        raw = _read_yaml(resolve_config_path(path))
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone do not catch."""
    t, d = cfg.train, cfg.data
    if t.batching not in ("grouped", "random"):
        raise ConfigError(f"train.batching: expected 'grouped' or 'random', got {t.batching!r}")
    if t.loss_norm not in ("auto", "batch", "dataset"):
        raise ConfigError(f"train.loss_norm: expected 'auto', 'batch' or 'dataset', got {t.loss_norm!r}")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype: expected float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    if cfg.tag.aggregation not in ("first", "average", "max"):
        raise ConfigError(f"tag.aggregation: expected first, average or max, got {cfg.tag.aggregation!r}")
    for name, value in (("train.batch_size", t.batch_size), ("train.eval_batch_size", t.eval_batch_size),
                        ("train.epochs", t.epochs), ("data.max_length", d.max_length)):
        if value <= 0:
            raise ConfigError(f"{name}: must be positive, got {value}")
    if not d.buckets or list(d.buckets) != sorted(set(d.buckets)):
        raise ConfigError(f"data.buckets: must be strictly increasing, got {list(d.buckets)}")
    if d.buckets[-1] < d.max_length:
        raise ConfigError(f"data.buckets: the largest bucket {d.buckets[-1]} must be >= data.max_length {d.max_length}")
    if d.max_length < 3:
        raise ConfigError(f"data.max_length: must be at least 3 (the two special tokens and one sub-token), "
                          f"got {d.max_length}")
    if d.limit < 0:
        raise ConfigError(f"data.limit: must be 0 (all sentences) or a count, got {d.limit}")
    for name, value in (("train.save_every", t.save_every), ("train.max_steps", t.max_steps),
                        ("train.warmup_steps", t.warmup_steps)):
        if value < 0:
            raise ConfigError(f"{name}: must be 0 (off) or a step count, got {value}")
    for name, value in (("train.keep_checkpoints", t.keep_checkpoints), ("train.log_every", t.log_every)):
        if value <= 0:
            raise ConfigError(f"{name}: must be positive, got {value}")
    if d.scheme not in ("auto", "iob2", "iob1", "bioes", "bilou", "io"):
        raise ConfigError(f"data.scheme: expected auto, iob2, iob1, bioes (bilou) or io, got {d.scheme!r}")
    if d.labels and (len(set(d.labels)) != len(d.labels) or "O" not in d.labels):
        raise ConfigError(f"data.labels: must list distinct tags including 'O', got {list(d.labels)}")
    if cfg.tag.words not in ("conll", "tokenizer"):
        raise ConfigError(f"tag.words: expected conll or tokenizer, got {cfg.tag.words!r}")
    if cfg.tag.context not in ("auto", *CONTEXTS):
        raise ConfigError(f"tag.context: expected auto, {', '.join(CONTEXTS)}, got {cfg.tag.context!r}")
    if d.context not in TRAIN_CONTEXTS:
        raise ConfigError(f"data.context: expected {' or '.join(TRAIN_CONTEXTS)}, got {d.context!r}")
    if d.max_line_bytes < 0:
        raise ConfigError(f"data.max_line_bytes: must be 0 (no cap) or a byte count, got {d.max_line_bytes}")
    if d.rare_type_count < 0:
        raise ConfigError(f"data.rare_type_count: must be 0 (off) or a count, got {d.rare_type_count}")
    if d.group_sentences < 0:
        raise ConfigError(f"data.group_sentences: must be 0 (off) or a count, got {d.group_sentences}")
    if cfg.tag.segment_length < 0:
        raise ConfigError(f"tag.segment_length: must be 0 (max_length) or a sub-token count, got "
                          f"{cfg.tag.segment_length}")
    if d.context_size < 0 or cfg.tag.context_size < 0:
        raise ConfigError("data.context_size, tag.context_size: must be 0 or more sub-tokens")
    if d.fit_buckets < 0:
        raise ConfigError(f"data.fit_buckets: must be 0 (off) or a count of lengths, got {d.fit_buckets}")
    if cfg.tag.compile_workers < -1:
        raise ConfigError(f"tag.compile_workers: must be -1 (auto), 0 (off) or a thread count, "
                          f"got {cfg.tag.compile_workers}")
    if t.compile_workers < -1:
        raise ConfigError(f"train.compile_workers: must be -1 (auto), 0 (off) or a thread count, "
                          f"got {t.compile_workers}")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: must be positive, got {t.learning_rate}")
    _validate_launch(t)


def _validate_launch(t: TrainConfig) -> None:
    if t.num_processes < 0:
        raise ConfigError(f"train.num_processes: must be 0 (detect) or a process count, got {t.num_processes}")
    if t.process_id < -1:
        raise ConfigError(f"train.process_id: must be -1 (detect) or this process's index, got {t.process_id}")
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
    def conv(x: Any) -> Any:
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(dataclasses.asdict(cfg))


# Per-launch settings, left out of a run's saved config: a resume may start on other hosts, or on each host from
# the one config.yaml process 0 wrote (which must not hand every host process 0's id).
LAUNCH_KEYS = ("coordinator_address", "num_processes", "process_id")


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
    changes = {}
    for sec, fields in sections.items():
        if isinstance(fields, dict):
            changes[sec] = dataclasses.replace(getattr(cfg, sec), **fields)
        else:
            changes[sec] = fields
    return dataclasses.replace(cfg, **changes)

