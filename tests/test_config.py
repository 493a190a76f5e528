import dataclasses
import typing

import pytest

from flaxner.config import (Config, ConfigError, TagConfig, TrainConfig, check_positions, load_config,
                            resolve_config_path, validate, validate_tag)


def test_base_inheritance_and_overrides():
    cfg = load_config("configs/minilm-conll2003.yaml", ["train.learning_rate=5e-5", "data.buckets=[16,512]"])
    assert cfg.model.name == "minilm" and cfg.model.from_pt is True
    assert cfg.train.learning_rate == 5e-5 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.buckets == (16, 512)
    assert cfg.train.batch_size == 16 and cfg.train.epochs == 4 and cfg.train.seed == 42


def test_seed_recipe_values():
    t = load_config("configs/mbert-conll2003.yaml").train
    assert (t.learning_rate, t.batch_size, t.epochs, t.adam_b1, t.adam_b2, t.adam_eps) == (3e-5, 16, 4, 0.9, 0.999, 1e-8)
    assert (t.weight_decay, t.warmup_steps, t.max_grad_norm, t.seed) == (0.0, 0, 1.0, 42)


@pytest.mark.parametrize("override, message", [
    ("train.learnig_rate=1e-4", "unknown key"),
    ("trian.epochs=1", "unknown key"),
    ("train.epochs=two", "expected int"),
    ("train.epochs=1.5", "expected int"),
    ("train.compact_vocab=3", "expected true/false"),
    ("train.batching=sorted", "grouped"),
    ("data.buckets=[64,32,512]", "strictly increasing"),
    ("data.buckets=[16,32]", "largest bucket"),
    ("data.fit_buckets=-1", "fit_buckets"),
    ("train.loss_norm=token", "loss_norm"),
    ("train.batch_size=0", "positive"),
    ("noequals", "key=value"),
    # holes: values that were accepted before
    ("tag.lookahead=0", "tag.lookahead: must be positive"),
    ("tag.batch_size=0", "tag.batch_size: must be positive"),
    ("tag.batch_tokens=-1", "tag.batch_tokens: must be 0"),
    ("tag.prefetch=0", "tag.prefetch: must be positive"),
    ("tag.stride=510", r"tag.stride: must be below tag.max_length - 2 = 510"),
    ("tag.max_length=2", "tag.max_length: must be at least 3"),
    ("tag.buckets=[64,32,512]", "tag.buckets: must be strictly increasing"),
    ("tag.buckets=[16,256]", "tag.buckets: the largest bucket 256 must be >= tag.max_length 512"),
    ("tag.dtype=int8", "tag.dtype: expected one of auto, float32, bfloat16, float16"),
    ("tag.aggregation=mean", "tag.aggregation: expected one of first, average, max"),
    ("tag.compile_workers=-2", "tag.compile_workers"),
    ("data.buckets=[0,512]", "data.buckets: must be strictly increasing positive"),
    ("model.hidden_size=-1", "model.hidden_size"),
    ("train.learning_rate=.nan", "train.learning_rate: must be positive"),
    ("train.adam_b1=1.0", r"train.adam_b1: must be in \[0, 1\)"),
    ("train.adam_b2=-0.5", "train.adam_b2"),
    ("train.adam_eps=-1e-8", "train.adam_eps"),
    ("train.weight_decay=-0.01", "train.weight_decay"),
    ("train.max_grad_norm=-1", "train.max_grad_norm"),
    ("data.context_dropout=0.5", "data.context_dropout 0.5: needs data.context: neighbours, not none"),
    ("data.context_dropout=1.5", r"data.context_dropout: must be in \[0, 1\]"),
    ("data.context_views=[full,none]", r"data.context_views \('full', 'none'\): needs data.context: neighbours"),
    ("data.context_views=[]", r"data.context_views: must be distinct views out of full, left, right, none, got \(\)"),
    ("data.context_views=[none,none]", "data.context_views: must be distinct views"),
    ("data.context_views=[middle]", r"data.context_views\[0\]: expected one of full, left, right, none, got 'middle'"),
    ("tag.context_views=[left,left]", "tag.context_views: must be distinct views"),
    ("tag.sentence_thresholds=[0.5,1.0]", r"tag.sentence_thresholds: must be distinct probabilities between 0 and 1"),
    ("tag.sentence_thresholds=[0.5,0.5]", r"tag.sentence_thresholds: must be distinct probabilities"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/base.yaml", [override])


def test_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['epochz'\]"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path(tmp_path / "missing.yaml")


def test_packaged_names_resolve():
    assert resolve_config_path("tiny").name == "tiny.yaml"
    assert load_config("quickstart").name == "quickstart"


def test_local_paths_are_saved_absolute(tmp_path, monkeypatch):
    from flaxner.config import absolute_paths

    (tmp_path / "my_data").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", ["data.source=my_data", "data.test_file=missing.txt", "model.name=bert-base-cased"])
    fixed = absolute_paths(cfg)
    assert fixed.data.source == str(tmp_path / "my_data")
    assert fixed.data.test_file == "missing.txt" and fixed.model.name == "bert-base-cased"  # as written
    assert absolute_paths(load_config("tiny")).data.source == "builtin"


# int and float fields that take any value: a new numeric field needs a bound (a `_min`/`_checked` default) or a
# line here saying why it has none.
UNBOUNDED = {"train.seed", "data.token_column", "data.tag_column"}


def test_every_numeric_field_has_a_bound():
    missing = []
    for section in ("data", "model", "train", "tag"):
        cls = type(getattr(Config(), section))
        hints = typing.get_type_hints(cls)
        missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls)
                    if hints[f.name] in (int, float) and "ok" not in f.metadata]
    assert sorted(set(missing) - UNBOUNDED) == []


@pytest.mark.parametrize("fields, message", [
    (dict(lookahead=0), "tag.lookahead: must be positive"),
    (dict(aggregation="mean"), "tag.aggregation: expected one of"),
    (dict(batch_size=2.0), "tag.batch_size: expected int"),
    (dict(words="spacy"), "tag.words: expected one of conll, tokenizer"),
])
def test_a_config_built_in_code_is_checked_too(fields, message):
    with pytest.raises(ConfigError, match=message):
        validate_tag(TagConfig(**fields))
    with pytest.raises(ConfigError, match=message):
        validate(Config(tag=TagConfig(**fields)))
    with pytest.raises(ConfigError, match="train.loss_norm"):
        validate(Config(train=TrainConfig(loss_norm="token")))


def test_positions_error_names_both_values():
    check_positions("data.max_length", 512, 512)
    with pytest.raises(ConfigError, match="^data.max_length 513 is more than the model's max_position_embeddings 512$"):
        check_positions("data.max_length", 513, 512)
