"""bfloat16 matrix products with float32 results, for every family without touching its modules.

Inside `bf16_matmuls()`, every `flax.linen.Dense` the model calls (all of each family's projections and its
classifier: nearly all of an encoder's FLOPs) multiplies bfloat16 copies of its input and kernel and accumulates in
float32; everything else (embeddings, LayerNorm, activations, attention's softmax) stays in the model's dtype. On a
CPU with bfloat16 matrix units (Intel AMX, `amx_bf16` in /proc/cpuinfo) XLA runs such a product several times
faster than a float32 one, while a bfloat16 product with a bfloat16 result (what `dtype: bfloat16` computes) takes
the slow path there. The price is the inputs' rounding to 8 bits of mantissa: measure the F1 before relying on it
(docs/benchmarks.md).

`model.dtype: mixed` (training, evaluation) and `flaxner tag --dtype mixed` build the model as `MixedPrecision`. The
gradients' products run the same way (`bf16_dot`'s custom VJP), the parameters and the optimizer stay float32.
It acts while a function is traced (`flax.linen.intercept_methods`), so use it inside the jitted function:

    def forward(params, ids, mask):
        with bf16_matmuls():
            return model(ids, mask, params=params).logits
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _dot(a, b, dims):
    return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_dot(x, kernel):
    """x [..., k] @ kernel [k, n] as bfloat16 x bfloat16 -> float32; the gradients' products too (the incoming
    gradient rounded to bfloat16, as mixed-precision training does), each returned in its input's dtype."""
    return _dot(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), ((x.ndim - 1,), (0,)))


def _fwd(x, kernel):
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return _dot(xb, kb, ((x.ndim - 1,), (0,))), (xb, kb, jnp.zeros((), x.dtype), jnp.zeros((), kernel.dtype))


def _bwd(res, g):
    xb, kb, x_type, k_type = res
    gb = g.astype(jnp.bfloat16)
    dx = _dot(gb, kb, ((g.ndim - 1,), (1,)))  # [..., n] x [k, n] -> [..., k]
    dk = _dot(xb.reshape(-1, xb.shape[-1]), gb.reshape(-1, gb.shape[-1]), ((0,), (0,)))  # [k, n]
    return dx.astype(x_type.dtype), dk.astype(k_type.dtype)


bf16_dot.defvjp(_fwd, _bwd)


def _dense(x, kernel, bias):
    y = bf16_dot(x, kernel)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


@contextlib.contextmanager
def bf16_matmuls():
    """Trace every `nn.Dense` call inside this context as a bfloat16 x bfloat16 -> float32 product."""
    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if type(m) is not nn.Dense or context.method_name != "__call__" or len(args) != 1 or kwargs:
            return next_fun(*args, **kwargs)
        kernel = m.get_variable("params", "kernel")
        if kernel is None:  # initialisation: let Dense create its parameters
            return next_fun(*args, **kwargs)
        return _dense(args[0], kernel, m.get_variable("params", "bias") if m.use_bias else None)

    with nn.intercept_methods(interceptor):
        yield


class MixedPrecision:
    """A model (any family's wrapper) whose calls run inside `bf16_matmuls`: `model.dtype: mixed`. Everything else
    is the wrapped model's; `resized` (the compact vocabulary) keeps the wrapping."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        with bf16_matmuls():
            return self.model(*args, **kwargs)

    def resized(self, vocab_size: int) -> MixedPrecision:
        return MixedPrecision(self.model.resized(vocab_size))


def bf16_kernels(params):
    """The parameters with every Dense kernel (2-D leaves named `kernel`) stored in bfloat16 ahead, so the
    compiled forward does not convert them at every call. Converted on the host (numpy with ml_dtypes' bfloat16),
    so that no conversion program is compiled per kernel shape."""
    def cast(path, x):
        name = getattr(path[-1], "key", None)
        if name == "kernel" and x.ndim == 2 and x.dtype == jnp.float32:
            return np.asarray(x).astype(jnp.bfloat16)
        return x
    return jax.tree_util.tree_map_with_path(cast, params)


def has_bf16_units() -> bool:
    """Whether this machine's CPU has bfloat16 matrix units (Linux: `amx_bf16` among /proc/cpuinfo's flags)."""
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
