"""A parameter tree's other spellings: PyTorch's names and layouts (what HF folders hold), and the scanned form of
the layer stack (stacked parameters with a leading layer axis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict


ENCODER_LAYERS = ("encoder", "layer")  # where the layer stack sits below the prefix (BERT's; DistilBERT: transformer)


def _layers(params: dict, prefix: str, at: tuple[str, ...]) -> dict:
    node = params[prefix]
    for k in at:
        node = node[k]
    return node


def _with_layers(params: dict, prefix: str, layers, at: tuple[str, ...]) -> dict:
    """A shallow copy of `params` with `prefix/<at...>` replaced."""
    def put(node: dict, keys: tuple[str, ...]):
        return layers if not keys else {**node, keys[0]: put(node[keys[0]], keys[1:])}

    return put(params, (prefix, *at))


def stack_layers(params: dict, prefix: str = "bert", at: tuple[str, ...] = ENCODER_LAYERS) -> dict:
    """Per-layer HF tree (`layer/0`, `layer/1`, ...) -> scanned tree (`layer/...` with a leading layer axis)."""
    per = _layers(params, prefix, at)
    n = len(per)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[per[str(i)] for i in range(n)])
    return _with_layers(params, prefix, stacked, at)


def unstack_layers(params: dict, prefix: str = "bert", at: tuple[str, ...] = ENCODER_LAYERS) -> dict:
    """Scanned tree -> per-layer HF tree (inverse of `stack_layers`)."""
    stacked = _layers(params, prefix, at)
    n = jax.tree.leaves(stacked)[0].shape[0]
    return _with_layers(params, prefix, {str(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}, at)


def from_pytorch_names(tensors: dict[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
    """PyTorch BERT names/layouts -> HF Flax key paths (Linear weight -> kernel transposed; LayerNorm weight or
    gamma -> scale, beta -> bias; Embedding weight -> embedding)."""
    out = {}
    for name, value in tensors.items():
        *mod, leaf = name.split(".")
        if leaf in ("weight", "gamma") and mod and mod[-1] == "LayerNorm":
            leaf = "scale"
        elif leaf == "beta" and mod and mod[-1] == "LayerNorm":
            leaf = "bias"
        elif leaf == "weight" and mod and mod[-1].endswith("embeddings"):
            leaf = "embedding"
        elif leaf == "weight" and value.ndim == 2:
            value, leaf = value.T, "kernel"
        out[(*mod, leaf)] = value
    return out


def to_pytorch_names(params: dict) -> dict[str, np.ndarray]:
    """HF Flax params -> PyTorch names and layouts (the inverse of `from_pytorch_names`), float32, contiguous."""
    tensors = {}
    for keys, value in flatten_dict(params).items():
        value = np.asarray(value, dtype=np.float32)
        *mod, leaf = keys
        if leaf == "kernel":
            value, leaf = value.T, "weight"
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        tensors[".".join([*mod, leaf])] = np.ascontiguousarray(value)
    return tensors
