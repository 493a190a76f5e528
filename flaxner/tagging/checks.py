"""What a Tagger accepts: a label map, a tokenizer, a TagConfig for the model (its own fields are
`flaxner.config.validate_tag`'s), and the tag options of a command line over a run's saved config."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from flaxner.config import Config, ConfigError, DataConfig, TagConfig, as_options, check_positions, validate_tag

_IOB2 = re.compile(r"O|[BI]-.+")


def check_iob2(labels: Sequence[str]) -> None:
    """Refuse a label map whose tags are not IOB2 (e.g. the LABEL_0.. of a model without a classifier)."""
    bad = [lab for lab in labels if not _IOB2.fullmatch(lab)]
    if bad or not labels:
        raise ValueError(f"the model's label map {list(labels)} is not IOB2 (O, B-X, I-X); bad: {bad}")


def check_tag_config(cfg: TagConfig, max_positions: int) -> None:
    """Refuse a TagConfig that cannot tag with a model of `max_positions` positions (its own fields are
    `flaxner.config.validate_tag`'s)."""
    check_positions("tag.max_length", cfg.max_length, max_positions)
    validate_tag(cfg)


def resolve_dtype(dtype: str) -> str:
    """'auto': bfloat16 on accelerators; on CPU, mixed where it has bfloat16 matrix units (Intel AMX: the same F1
    at twice the speed, docs/benchmarks.md), else float32."""
    if dtype != "auto":
        return dtype
    import jax

    if jax.default_backend() != "cpu":
        return "bfloat16"
    from flaxner.models.matmul import has_bf16_units

    return "mixed" if has_bf16_units() else "float32"


_LAST_RUN_CONFIG: dict[tuple, Config] = {}


def run_config(model_dir: str | Path) -> Config | None:
    """A run folder's saved config.yaml (how its model was trained and is to be used), else None. The last one
    read is kept (a Config is immutable) while the file's size and time stay: `flaxner tag` reads it for its
    option checks, then the Tagger does."""
    from flaxner.config import load_config

    saved = Path(model_dir) / "config.yaml"
    if not saved.is_file():
        return None
    st = saved.stat()
    key = (str(saved.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _LAST_RUN_CONFIG:
        cfg = load_config(saved)
        _LAST_RUN_CONFIG.clear()
        _LAST_RUN_CONFIG[key] = cfg
    return _LAST_RUN_CONFIG[key]


def run_tag_config(model_dir: str | Path) -> TagConfig:
    """The `tag:` section of a run folder's config.yaml, else the defaults."""
    saved = run_config(model_dir)
    return saved.tag if saved else TagConfig()


def tag_overrides(model_dir: str | Path, options: dict) -> dict:
    """The TagConfig fields among parsed `options` (None: not given), validated over the run's saved `tag:` section
    before any work, an error naming the option as typed (`--lookahead`)."""
    given = {f.name: options[f.name] for f in dataclasses.fields(TagConfig) if options.get(f.name) is not None}
    try:
        validate_tag(dataclasses.replace(run_tag_config(model_dir), **given))
    except ConfigError as e:
        raise as_options(e, {f"tag.{k}": "--" + k.replace("_", "-") for k in given}) from None
    return given


def resolve_context(cfg: TagConfig, run: Config | None) -> TagConfig:
    """`context: auto`, `context_size: 0` and `context_views: ()` made concrete from the run's data config
    (`run_config`): the rows its model was trained on (a folder without a run config, and every run before
    contexts existed, trained on sentences). Views other than `full` need context `neighbours`: given for
    another context they are an error, taken from a run whose context was overridden they are dropped."""
    data = run.data if run else DataConfig()
    context = data.context if cfg.context == "auto" else cfg.context
    views = cfg.context_views or (data.context_views if context == "neighbours" else ("full",))
    if views != ("full",) and context != "neighbours":
        raise ConfigError(f"tag.context_views {list(views)}: needs context neighbours, not {context}")
    return dataclasses.replace(cfg, context=context, context_size=cfg.context_size or data.context_size,
                               context_views=views)
