"""Config files: the packaged configs folder, YAML with `base:` inheritance, dotted `key=value` overrides, and typed
dataclasses built from the mappings they give. The schema and its validation are `flaxner.config`."""

from __future__ import annotations

import dataclasses
import typing
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


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


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


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a mapping, its `base:` chain merged under it."""
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
    return _merge(read_yaml(resolve_config_path(base_path), seen + (path,)), raw)


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


def coerce_value(value: Any, typ: Any, where: str) -> Any:
    """Check `value` against a dataclass field type, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            raise ConfigError(f"{where}: expected one of {', '.join(str(a).lower() for a in allowed)}, got {value!r}")
        return value
    if origin is tuple:
        (inner, _) = typing.get_args(typ)
        if isinstance(value, str) and typing.get_origin(inner) is typing.Literal:
            value = [value]  # train.report_to=tensorboard: a list of one choice
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {getattr(inner, '__name__', inner)}, got {value!r}")
        return tuple(coerce_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    if typ in (int, float, str) and not isinstance(value, typ):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def build_dataclass(cls: type, raw: dict[str, Any], where: str) -> Any:
    """An instance of the (nested) dataclass `cls` from a mapping, every key known and every value checked."""
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
            kwargs[name] = build_dataclass(typ, value, key)
        else:
            kwargs[name] = coerce_value(value, typ, key)
    return cls(**kwargs)


def check_fields(section: Any, where: str) -> None:
    """Each field of one section (`where`: data, model, train or tag) against its type, choices and bound."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key = f"{where}.{f.name}"
        value = coerce_value(getattr(section, f.name), hints[f.name], key)
        if "ok" in f.metadata and not f.metadata["ok"](value):
            raise ConfigError(f"{key}: must be {f.metadata['says']}, got {value!r}")


def as_options(e: ConfigError, options: dict[str, str]) -> ConfigError:
    """The error with the config keys that options set named as typed ({"tag.lookahead": "--lookahead"})."""
    import re

    return ConfigError(re.sub(r"\b(?:data|model|train|tag)\.\w+", lambda m: options.get(m[0], m[0]), str(e)))
