"""Devices, the `data` mesh, host-to-device batch placement and JAX's persistent compilation cache."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flaxner.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The mesh every step runs on: parameters replicated, batches split along `data`."""

    mesh: Mesh
    replicated: NamedSharding
    batch_sharding: NamedSharding

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def platform(self) -> str:
        return self.mesh.devices.flat[0].platform

    @property
    def length_multiple(self) -> int:
        """Padded lengths are kept to multiples of this: 8 on accelerators (tensor-core tiles), 1 on CPU."""
        return 1 if self.platform == "cpu" else 8

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Place a global numpy batch (the same on every host) onto the mesh, each device taking its rows."""
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch_sharding)
        return {k: jax.make_array_from_callback(v.shape, self.batch_sharding, lambda i, v=v: v[i])
                for k, v in batch.items()}


def abstract(tree):
    """Shapes, dtypes and shardings of a tree of arrays: to lower a jitted function without the values, or to
    restore a checkpoint onto the same devices."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


_COMPILES = {"count": 0, "seconds": 0.0}


def _count_compile(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES["count"] += 1
        _COMPILES["seconds"] += duration


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def compile_stats() -> dict[str, float]:
    """XLA executables built in this process so far (compiled, or loaded from the persistent cache), and the
    seconds that took."""
    return dict(_COMPILES)


def enable_compilation_cache(path: str) -> None:
    """Persist XLA executables so that a second run with the same shapes compiles nothing."""
    if not path:
        return
    cache = Path(os.path.expanduser(path))
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def setup_runtime(tc: TrainConfig) -> Runtime:
    """Enable the compile cache and build the mesh of every host's devices (ordered by process, so each host's
    devices take consecutive rows of a batch). A multi-host run calls `training.distributed.initialize` first."""
    enable_compilation_cache(tc.compilation_cache)
    devices = np.array(jax.devices())
    for name, size in (("train.batch_size", tc.batch_size), ("train.eval_batch_size", tc.eval_batch_size)):
        if size % devices.size:
            raise ValueError(f"{name}={size} is not divisible by the {devices.size} devices")
    mesh = Mesh(devices, ("data",))
    log.info("%d device(s) on %d host(s) (%d here): %s", devices.size, jax.process_count(),
             jax.local_device_count(), devices[0].platform)
    return Runtime(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))
