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
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp

from flaxner.runtime import abstract

log = logging.getLogger(__name__)

BATCH_KEYS = ("input_ids", "attention_mask", "labels")
PACKED_KEYS = ("input_ids", "segment_ids", "labels")  # `flaxner.data.packing.collate_packed`
THREAD_PREFIX = "flaxner-compile"


def auto_workers(platform: str, cpus: int | None = None) -> int:
    """Background compile threads when the config says -1: on an accelerator the host's cores are idle while the
    device trains, so up to half of them (at most 8: each compile holds its own memory); none on CPU, where the
    step itself uses every core (on 2 cores a compile thread made the quickstart no faster)."""
    cpus = cpus or os.cpu_count() or 1
    return 0 if platform == "cpu" else max(1, min(8, cpus // 2))


def batch_spec(rows: int, length: int, sharding, packed: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract batch `batching.collate` (or, `packed`, `packing.collate_packed`) makes, placed as
    `Runtime.put` places it."""
    return {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding)
            for k in (PACKED_KEYS if packed else BATCH_KEYS)}


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


def submit_run(pre: Precompiler, run) -> dict[str, list[tuple[str, int]]]:
    """Queue the rest of a run's compiles (a `flaxner.training.train.Run`, from where its loop state stands) in order of
    first use, as its epoch plan will call them: the optimizer update of `run.step_fn` (`step.TrainStep`), its
    gradients for each train shape at its first step, the "eval" split's shapes at the end of the current epoch,
    other splits' (test) at the end of the run. Returns each evaluation split's keys, for `claim` before it is
    evaluated."""
    tc, plan, loop = run.cfg.train, run.plan, run.loop
    keys = {name: [("eval", n) for n in lengths] for name, lengths in run.eval_shapes().items()}
    if not pre.workers:
        return keys
    steps_left = (run.total_steps - run.step) * tc.grad_accum  # in batches (an optimizer step takes grad_accum)
    spec, step, packed, shard = abstract(run.state), run.step_fn, plan.pack_length > 0, run.rt.batch_sharding
    ahead = [(0, "update", step.update, spec, spec["params"], *step.update_extra)]
    ahead += [(s, ("train", shape), step.grad, spec, batch_spec(*plan.dims(shape), shard, packed),
               *step.grad_extra) for s, shape in plan.first_uses(loop.epoch, loop.batch, steps_left)]
    for name, split_keys in keys.items():
        at = min(plan.steps_per_epoch - loop.batch, steps_left) if name == "eval" else steps_left
        ahead += [(at, key, run.eval_fn, spec["params"], batch_spec(tc.eval_batch_size, key[1], shard, packed))
                  for key in split_keys]
    for _, key, fn, *args in sorted(ahead, key=lambda p: p[0]):
        pre.submit(key, fn, *args)
    log.info("compiling %d shapes ahead on %d thread(s)", len({p[1] for p in ahead}), pre.workers)
    return keys
