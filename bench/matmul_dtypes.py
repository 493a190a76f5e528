"""What XLA's CPU path makes of each number format: one linear layer's product, and a whole encoder forward.

    python -m bench.matmul_dtypes [--model minilm|tiny] [--tokens 2048] [--repeats 20]

Part 1 times a [tokens, hidden] x [hidden, 4 * hidden] product (MiniLM's FFN shape by default) as float32,
bfloat16 -> bfloat16, bfloat16 x bfloat16 -> float32 (what `dtype: mixed` runs, flaxner/models/matmul.py) and
int8 x int8 -> int32 (what an int8 forward would run, before its quantize/dequantize work). Part 2 times the
model's forward on a packed [tokens / 128, 128] batch in float32 and in `mixed`, and their gradients of a token
loss (one training step's products). Reported: wall and CPU milliseconds per call (CPU: this process' user + system
time, so the figures are comparable on a busy machine), and GFLOP per CPU second. Whether the fast formats pay
depends on the CPU (Intel AMX has bfloat16 and int8 matrix units; the header prints the CPU's flags)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.common import header, markdown_table


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call after a warm-up call: the median wall of `repeats` calls, and their CPU time
    over all of them divided by `repeats` (the process clock ticks in 10 ms)."""
    import jax

    jax.block_until_ready(fn(*args))
    walls = []
    c0 = os.times()
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
    c1 = os.times()
    return sorted(walls)[len(walls) // 2], ((c1.user - c0.user) + (c1.system - c0.system)) / repeats


def products(tokens: int, hidden: int, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((tokens, hidden), np.float32), rng.standard_normal((hidden, 4 * hidden), np.float32)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    xi, wi = (rng.integers(-127, 128, a.shape).astype(np.int8) for a in (x, w))
    dot = jax.lax.dot
    cases = [("float32", jax.jit(dot), (x, w)),
             ("bfloat16 -> bfloat16", jax.jit(dot), (xb, wb)),
             ("bfloat16 -> float32 (mixed)", jax.jit(lambda a, b: dot(a, b, preferred_element_type=jnp.float32)),
              (xb, wb)),
             ("int8 -> int32", jax.jit(lambda a, b: dot(a, b, preferred_element_type=jnp.int32)), (xi, wi))]
    flop = 2 * tokens * hidden * 4 * hidden
    out = []
    for name, fn, args in cases:
        wall, cpu = timed(fn, *args, repeats=repeats)
        out.append({"what": f"[{tokens}, {hidden}] x [{hidden}, {4 * hidden}] {name}", "wall_ms": wall * 1e3,
                    "cpu_ms": cpu * 1e3, "gflop_per_cpu_s": flop / cpu / 1e9 if cpu else None})
    return out


def load(name: str):
    from flaxner.config import ModelConfig
    from flaxner.models.loading import make_model

    if name == "tiny":  # the tests' tiny BERT config, random weights
        return make_model(ModelConfig(name="tests/fixtures/tiny-bert", random_init=True))
    return make_model(ModelConfig(name=name))


def model_passes(model, params, tokens: int, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flaxner.models.matmul import MixedPrecision, bf16_kernels

    rows, length = max(tokens // 128, 1), 128
    rng = np.random.default_rng(1)
    ids = rng.integers(min(1000, model.config.vocab_size // 2), min(20000, model.config.vocab_size), (rows, length)).astype(np.int32)
    seg = (np.arange(length) // 21 + 1)[None].repeat(rows, 0).astype(np.int32)  # sentences of 21 sub-tokens
    labels = rng.integers(0, len(model.config.labels), (rows, length)).astype(np.int32)
    out = []
    for dtype, m, p in (("float32", model, params), ("mixed", MixedPrecision(model), bf16_kernels(params))):
        fwd = jax.jit(lambda p, m=m: m(ids, params=p, segment_ids=seg).logits)

        def loss(p, m=m):
            logp = jax.nn.log_softmax(m(ids, params=p, segment_ids=seg).logits)
            return -jnp.take_along_axis(logp, labels[..., None], -1).mean()
        for what, fn, args in ((f"forward [{rows}, {length}] {dtype}", fwd, (p,)),
                               (f"loss gradients [{rows}, {length}] {dtype}", jax.jit(jax.grad(loss)),
                                (params,))):  # float32 parameters, as training holds them
            wall, cpu = timed(fn, *args, repeats=repeats)
            out.append({"what": what, "wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3,
                        "tokens_per_cpu_s": rows * length / cpu if cpu else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.matmul_dtypes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", help="minilm (the packaged all-MiniLM-L6-v2), tiny, or a folder")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    header()
    try:
        flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
    except OSError:
        flags = set()
    print("# matrix units: " + (", ".join(sorted(f for f in flags if f.startswith("amx") or "vnni" in f
                                                 or f == "avx512_bf16")) or "none listed"))
    model, params = load(args.model)
    rows = products(args.tokens, model.config.hidden_size, args.repeats)
    print(markdown_table(rows, [("what", "product", ""), ("wall_ms", "wall ms", ".2f"), ("cpu_ms", "CPU ms", ".2f"),
                                ("gflop_per_cpu_s", "GFLOP / CPU s", ",.0f")]))
    print()
    rows = model_passes(model, params, args.tokens, max(args.repeats // 4, 2))
    print(markdown_table(rows, [("what", "pass", ""), ("wall_ms", "wall ms", ".1f"), ("cpu_ms", "CPU ms", ".1f"),
                                ("tokens_per_cpu_s", "tokens / CPU s", ",.0f")]))


if __name__ == "__main__":
    main()
