"""Compile the executables a run will need on background threads, in the order the run will need them.

A run's batch shapes are known before its first step (the batch order is a pure function of the data and the
seed), so its train and evaluation steps can be compiled while earlier shapes already train. JAX keeps what
`jit(f).lower(...).compile()` builds, so the ordinary jitted call finds it. Before a shape's first call the run
`claim`s it: a compile under way is waited for, one not started yet is dropped and the call compiles it, so
nothing is compiled twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from flaxner.data import batch_order, bucket_for
from flaxner.runtime import abstract

log = logging.getLogger(__name__)

BATCH_KEYS = ("input_ids", "attention_mask", "labels")
THREAD_PREFIX = "flaxner-compile"


def auto_workers(platform: str, cpus: int | None = None) -> int:
    """Background compile threads when the config says -1: on an accelerator the host's cores are idle while the
    device trains, so up to half of them (at most 8: each compile holds its own memory); none on CPU, where the
    step itself uses every core (on 2 cores a compile thread made the quickstart no faster)."""
    cpus = cpus or os.cpu_count() or 1
    return 0 if platform == "cpu" else max(1, min(8, cpus // 2))


def batch_spec(rows: int, length: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract batch `data.collate` makes, placed as `Runtime.put` places it."""
    return {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding) for k in BATCH_KEYS}


def first_uses(lengths: np.ndarray, batch_size: int, buckets: Sequence[int], seed: int, epochs: Sequence[int],
               mode: str, start_batch: int = 0) -> list[tuple[int, int]]:
    """(step, padded length) where each training shape is first used, over `epochs` (the first from batch
    `start_batch` on, as a resumed run goes), steps counted from there."""
    out, seen, step = [], set(), 0
    for n, epoch in enumerate(epochs):
        for idx in batch_order(lengths, batch_size, seed, epoch, mode)[start_batch if n == 0 else 0:]:
            length = bucket_for(int(lengths[idx].max()), buckets)
            if length not in seen:
                seen.add(length)
                out.append((step, length))
            step += 1
    return out


def eval_lengths(lengths: np.ndarray, batch_size: int, buckets: Sequence[int]) -> list[int]:
    """The padded lengths an evaluation of these rows uses (`evaluate.predict`'s batches)."""
    return sorted({bucket_for(int(lengths[idx].max()), buckets)
                   for idx in batch_order(lengths, batch_size, 0, 0, shuffle=False)})


class Precompiler:
    """A pool of compile threads: `submit` lowers and compiles a jitted function for abstract arguments;
    `claim(key)` before the first real call drops a compile not yet started (the call compiles it at once) and
    waits for one under way. With 0 workers it does nothing."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=THREAD_PREFIX) if workers > 0 else None
        self._futures: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.done: list[Hashable] = []  # keys compiled in the background, in completion order
        self.waited_s = 0.0  # time the run spent in `claim` waiting for compiles under way

    def submit(self, key: Hashable, fn: Callable, *args) -> None:
        """Queue `fn.lower(*args).compile()` under `key` (once per key)."""
        if self._pool is None or key in self._futures:
            return
        self._futures[key] = self._pool.submit(self._compile, key, fn, args)

    def _compile(self, key: Hashable, fn: Callable, args: tuple) -> None:
        try:
            fn.lower(*args).compile()
        except Exception as e:  # the real call compiles again and raises where the user can see it
            log.warning("background compile of %s failed: %s", key, e)
            return
        with self._lock:
            self.done.append(key)

    def claim(self, *keys: Hashable) -> float:
        """The run is about to call these shapes: cancel their compiles not yet started, wait for the others;
        returns the seconds waited."""
        running = []
        for key in keys:
            fut = self._futures.pop(key, None)
            if fut is not None and not fut.cancel():
                running.append(fut)
        t = time.perf_counter()
        for fut in running:
            fut.result()
        waited = time.perf_counter() - t
        self.waited_s += waited
        return waited

    def close(self) -> None:
        """Drop what has not started; compiles under way finish on their threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._futures.clear()

    def __enter__(self) -> Precompiler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def workers_for(configured: int, platform: str) -> int:
    """`train.compile_workers`, with -1 resolved by `auto_workers`."""
    return auto_workers(platform) if configured < 0 else configured


def submit_run(pre: Precompiler, step_fn: Callable, eval_fn: Callable, state, rt, tc, buckets: Sequence[int],
               train_lengths: np.ndarray, eval_splits: dict[str, np.ndarray], start: tuple[int, int],
               steps_left: int, steps_per_epoch: int) -> dict[str, list[tuple[str, int]]]:
    """Queue the rest of a run's compiles in order of first use: the optimizer update of `step_fn`
    (`step.TrainStep`), its gradients for each train shape at its first step from
    `start` = (epoch, batch) on, the "eval" split's shapes at the end of the current epoch, other splits' (test)
    at the end of the run. Returns each evaluation split's keys, for `claim` before it is evaluated."""
    keys = {name: [("eval", n) for n in eval_lengths(lengths, tc.eval_batch_size, buckets)]
            for name, lengths in eval_splits.items()}
    if not pre.workers:
        return keys
    spec = abstract(state)
    plan = [(0, "update", step_fn.update, spec, spec["params"])]
    plan += [(s, ("train", n), step_fn.grad, spec, batch_spec(tc.batch_size, n, rt.batch_sharding))
             for s, n in first_uses(train_lengths, tc.batch_size, buckets, tc.seed, range(start[0], tc.epochs),
                                    tc.batching, start[1]) if s < steps_left]
    for name, split_keys in keys.items():
        at = min(steps_per_epoch - start[1], steps_left) if name == "eval" else steps_left
        plan += [(at, key, eval_fn, spec["params"], batch_spec(tc.eval_batch_size, key[1], rt.batch_sharding))
                 for key in split_keys]
    for _, key, fn, *args in sorted(plan, key=lambda p: p[0]):
        pre.submit(key, fn, *args)
    log.info("compiling %d shapes ahead on %d thread(s)", len({p[1] for p in plan}), pre.workers)
    return keys
