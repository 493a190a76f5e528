"""A parameter tree's other spellings: PyTorch's names and layouts (what HF folders hold), and the scanned form of
the layer stack (stacked parameters with a leading layer axis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict


def _layers(params: dict, prefix: str) -> dict:
    return params[prefix]["encoder"]["layer"]


def _with_layers(params: dict, prefix: str, layers) -> dict:
    """A shallow copy of `params` with `prefix/encoder/layer` replaced."""
    backbone = dict(params[prefix])
    backbone["encoder"] = {**backbone["encoder"], "layer": layers}
    return {**params, prefix: backbone}


def stack_layers(params: dict, prefix: str = "bert") -> dict:
    """Per-layer HF tree (`layer/0`, `layer/1`, ...) -> scanned tree (`layer/...` with a leading layer axis)."""
    per = _layers(params, prefix)
    n = len(per)
    return _with_layers(params, prefix, jax.tree.map(lambda *xs: jnp.stack(xs), *[per[str(i)] for i in range(n)]))


def unstack_layers(params: dict, prefix: str = "bert") -> dict:
    """Scanned tree -> per-layer HF tree (inverse of `stack_layers`)."""
    stacked = _layers(params, prefix)
    n = jax.tree.leaves(stacked)[0].shape[0]
    return _with_layers(params, prefix, {str(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)})


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
