"""Build a model of one of flaxner's families (flaxner/models/registry.py) and its tokenizer: pretrained (hub name or
local HF folder) or random.

Weights load from `model.safetensors` (PyTorch names, sharded or not), `flax_model.msgpack` (HF Flax tree) or
`pytorch_model.bin` (`torch.load(weights_only=True)`), without transformers' model classes; `config.json` is read
by the config class of its `model_type`'s family. Nothing a folder names in `auto_map` is ever imported."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxner.config import ModelConfig
from flaxner.data.labels import CONLL_LABELS
from flaxner.models.weights import from_pytorch_names
from flaxner.models.checks import ModelFileError, check_bounds, check_tokenizer_fits
from flaxner.models.matmul import MixedPrecision
from flaxner.models.tokenizer import TOKENIZER_FILES, load_tokenizer  # noqa: F401 (loading.load_tokenizer)
from flaxner.models.registry import family_of

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "mixed": jnp.float32}
MINILM = "minilm"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Architecture configs shipped so that random-weight models of hub shapes build offline (speed work).
KNOWN_CONFIGS = Path(__file__).resolve().parent.parent / "resources" / "configs"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
FLAX, TORCH_BIN = "flax_model.msgpack", "pytorch_model.bin"
# What a hub download fetches: config, tokenizer and weights, never code.
HUB_PATTERNS = ["config.json", "*.json", "*.txt", "*.model", SAFETENSORS, "model-*.safetensors", FLAX, TORCH_BIN]


class ModelNotReachable(OSError):
    """Neither a local folder nor a hub model that can be downloaded now."""


def packaged_minilm() -> str:
    """The HF folder of all-MiniLM-L6-v2 (offline default): `flaxner fetch minilm` puts it in flaxner's cache
    (flaxner/models/minilm.py); a one-line error says so when it is missing."""
    from flaxner.models.minilm import minilm_folder

    return str(minilm_folder())


def resolve_name(name: str) -> str:
    """`minilm` -> the packaged folder; a relative folder is looked up from here, then from the repo root;
    anything else (a hub name) is passed through."""
    if name == MINILM:
        return packaged_minilm()
    if name and not Path(name).exists() and (REPO_ROOT / name).is_dir():
        return str(REPO_ROOT / name)
    return name


def model_folder(name: str) -> Path:
    """The local folder of `name`: itself, or its hub snapshot (cached or downloaded; config, tokenizer, weights)."""
    name = resolve_name(name)
    if Path(name).is_dir():
        return Path(name)
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such model folder")
    from huggingface_hub import snapshot_download

    try:  # the cache first: no network round trip when the model is already here
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (any of several hub error types): try the network once
        pass
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated: all the same to the user
        raise ModelNotReachable(
            f"model {name!r} is not reachable: not a local folder, not in the hub cache, and not downloadable now "
            f"({type(e).__name__}); offline, use configs/quickstart.yaml or model.name=minilm (the packaged MiniLM)"
        ) from None


def make_tokenizer(cfg: ModelConfig):
    """The fast tokenizer of the model (offsets and word ids need the Rust tokenizer)."""
    return load_tokenizer(model_folder(cfg.tokenizer or cfg.name))


def read_config(folder: Path):
    """The config of `folder`'s config.json, read by the config class of its model_type's family."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFileError(f"{folder}: no config.json (not an HF model folder)")
    return config_from_file(path)


def config_from_file(path: Path):
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ModelFileError(f"{path}: not a JSON object")
    # A config.json without model_type is an old BERT one (transformers reads it so too).
    family = family_of(d.get("model_type", "bert"), str(path))
    check_bounds(d, str(path))
    return family.config_class().from_dict(d, str(path))


def base_config(name: str):
    """The config of `name`: a local folder, a config shipped in the package (mBERT), or the hub."""
    shipped = KNOWN_CONFIGS / f"{Path(name).name}.json"
    if not Path(resolve_name(name)).is_dir() and shipped.is_file():
        return config_from_file(shipped)
    return read_config(model_folder(name))


def model_positions(cfg: ModelConfig) -> int:
    """The positions of the model `make_model` builds for `cfg` (its family's field of the checkpoint's config, or
    of the base config for `random_init`), known before any weights load."""
    conf = base_config(cfg.name) if cfg.random_init else read_config(model_folder(cfg.name))
    return family_of(conf.model_type).max_positions(conf)


def build(config, cfg: ModelConfig):
    """The model of `config`'s family (its registry row's model class), in `cfg`'s dtype and layer layout."""
    model_class = family_of(config.model_type).model_class()
    model = model_class(config, DTYPES[cfg.dtype], scan_layers=cfg.scan_layers, remat=cfg.remat)
    return MixedPrecision(model) if cfg.dtype == "mixed" else model


def make_model(cfg: ModelConfig, labels: Sequence[str] = CONLL_LABELS, seed: int = 0, vocab_size: int | None = None):
    """The model of `cfg` for `labels` (its family's class, through `build`); returns (model, params in the HF Flax
    tree)."""
    labels = tuple(labels)
    if cfg.random_init:
        conf = _random_config(cfg, base_config(cfg.name), vocab_size).replace(labels=labels)
        model = build(conf, cfg)
        return model, model.init_params(seed)
    folder = model_folder(cfg.name)
    ckpt_conf = read_config(folder)
    model = build(ckpt_conf.replace(labels=labels), cfg)
    params = load_params(folder, model, prefer_pt=cfg.from_pt, seed=seed, checkpoint_labels=ckpt_conf.labels)
    return model, params


def _random_config(cfg: ModelConfig, conf, vocab_size: int | None):
    for field, attr in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                        ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size")):
        value = getattr(cfg, field)
        if value:
            conf = conf.replace(**{attr: value})
    return conf.replace(vocab_size=vocab_size) if vocab_size else conf


def load_trained(path: str | Path, dtype: str = "float32", scan_layers: bool = False):
    """A fine-tuned token-classification model (an HF folder, or a run folder holding `model/`): (model, params,
    tokenizer, labels)."""
    folder, model, params = load_trained_model(path, dtype, scan_layers)
    tokenizer = load_tokenizer(folder)
    check_tokenizer_fits(tokenizer, model.config.vocab_size, folder)
    return model, params, tokenizer, list(model.config.labels)


def load_trained_model(path: str | Path, dtype: str = "float32", scan_layers: bool = False):
    """`load_trained` without the tokenizer: (the model's folder, model, params)."""
    from flaxner.rundir import RunDir

    p = RunDir(path).model_dir() or Path(path)
    if p.exists() and not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json here or in {path}/model (not an HF model or run folder)")
    folder = p if p.exists() else model_folder(str(path))
    conf = read_config(folder)
    if not conf.labels:
        raise ModelFileError(f"{folder}/config.json: no id2label (not a token-classification model)")
    model = build(conf, ModelConfig(name=str(folder), dtype=dtype, scan_layers=scan_layers))
    return folder, model, load_params(folder, model, checkpoint_labels=conf.labels)



# --- weights files -------------------------------------------------------------------------------------------


def weights_file(folder: Path, prefer_pt: bool = False) -> Path:
    """The weights file to read: Flax msgpack first (PyTorch files first with `prefer_pt`), then safetensors
    (single or sharded), then pytorch_model.bin."""
    pt = [folder / SAFETENSORS, folder / SAFETENSORS_INDEX, folder / TORCH_BIN]
    order = pt + [folder / FLAX] if prefer_pt else [folder / FLAX] + pt
    for f in order:
        if f.is_file():
            return f
    raise ModelFileError(f"{folder}: no weights ({SAFETENSORS}, {FLAX} or {TORCH_BIN})")


def read_weights(path: Path, convert=from_pytorch_names) -> dict[tuple[str, ...], np.ndarray]:
    """Flat {key path: float32 array} in the HF Flax naming, from any of the three formats (`convert`: PyTorch
    names -> Flax key paths, a family's `from_pytorch_names`)."""
    if path.name == FLAX:
        return _read_msgpack(path)
    if path.name == SAFETENSORS_INDEX:
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelFileError(f"{path}: not a safetensors index ({e})") from None
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(path.parent / shard))
        return convert(tensors)
    if path.name == TORCH_BIN:
        return convert(_read_torch_bin(path))
    return convert(_read_safetensors(path))


def _read_msgpack(path: Path) -> dict[tuple[str, ...], np.ndarray]:
    from flax.serialization import msgpack_restore
    from flax.traverse_util import flatten_dict

    try:
        tree = msgpack_restore(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for damaged data
        raise ModelFileError(f"{path}: not a readable Flax msgpack file, truncated or damaged ({e}); "
                             f"re-export the model") from None
    if not isinstance(tree, dict):
        raise ModelFileError(f"{path}: not a Flax parameter tree")
    return {k: np.asarray(v, np.float32) for k, v in flatten_dict(tree).items()}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelFileError(f"{path}: missing (named by {SAFETENSORS_INDEX})")
    try:
        with safe_open(str(path), framework="flax") as f:  # "flax": bfloat16 files too
            return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors file, truncated or damaged ({e}); "
                             f"re-export or re-download it") from None


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ModelFileError(f"{path}: reading pytorch_model.bin needs torch (pip install torch), or convert the "
                             f"folder to model.safetensors") from None
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: refused, holds more than tensors (torch.load(weights_only=True): "
                             f"{first}); convert it to model.safetensors from a trusted copy") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ModelFileError(f"{path}: not a readable PyTorch weights file, truncated or damaged ({e})") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: not a PyTorch state dict")
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "float")}


def load_params(folder: Path, model, prefer_pt: bool = False, seed: int = 0,
                checkpoint_labels: Sequence[str] = ()) -> dict:
    """The weights of `folder` fitted to `model`'s tree; a classifier is kept only when the checkpoint's label
    map equals the model's, else drawn fresh. One log line says what was left out and what is new."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    path = weights_file(folder, prefer_pt)
    family = family_of(model.config.model_type)
    found = read_weights(path, family.from_pytorch_names)
    # A bare encoder checkpoint (BertModel) names its weights without the `bert.` prefix.
    found = {((family.prefix, *k) if k[0] in family.bare_keys else k): v for k, v in found.items()}
    want = flatten_dict(model.params_shape())
    labels = tuple(model.config.labels)
    keep_classifier = tuple(checkpoint_labels) == labels and all(
        k in found and found[k].shape == want[k].shape for k in want if k[0] == "classifier")
    params, new, fresh = {}, [], []
    for k, spec in want.items():
        if k[0] == "classifier" and not keep_classifier:
            new.append(k)
            continue
        if k not in found and k[0] != family.prefix:  # a head between backbone and classifier (ModernBERT's)
            fresh.append(k)
            continue
        if k not in found:
            raise ModelFileError(f"{path}: no weight {'.'.join(k)} for a {model.config.model_type} of this config")
        if found[k].shape != spec.shape:
            raise ModelFileError(f"{path}: {'.'.join(k)} has shape {found[k].shape}, config.json implies "
                                 f"{spec.shape}")
        params[k] = found[k]
    if new:
        rng = jax.random.PRNGKey(seed)
        h = model.config.hidden_size
        # lecun_normal, as transformers' Flax class drew it (flaxner's recorded results were trained so)
        params[("classifier", "kernel")] = np.asarray(
            jax.nn.initializers.lecun_normal()(rng, (h, len(labels)), jnp.float32))
        params[("classifier", "bias")] = np.zeros(len(labels), np.float32)
    if fresh:  # as the family initialises it (a bare encoder checkpoint has no head)
        init = flatten_dict(jax.device_get(model.init_params(seed)))
        params.update({k: init[k] for k in fresh})
    unused = sorted(".".join(k) for k in found if k not in want)
    parts = [f"loaded {path}"]
    if unused:
        parts.append(f"unused: {_short(unused)}")
    if new:
        why = ("labels differ from the checkpoint's" if any(k[0] == "classifier" for k in found)
               else "the checkpoint has none")
        parts.append(f"new classifier for {len(labels)} labels ({why})")
    if fresh:
        parts.append(f"new {_short(sorted({'.'.join(k[:-1]) for k in fresh}))} (not in the checkpoint)")
    log.info("; ".join(parts))
    # device_put, not jnp.asarray: a plain copy, where jnp.asarray compiles a program per shape (jax 0.10)
    return jax.device_put(unflatten_dict(params))


def _short(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
