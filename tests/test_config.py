import pytest

from flaxner.config import ConfigError, load_config, resolve_config_path


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
