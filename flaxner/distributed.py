"""What the training loop needs to run on several hosts: start-up, who writes the run folder, agreeing on a
stop, and reading a global array. Single-process versions; with one process each is the obvious no-op."""

from __future__ import annotations

import jax
import numpy as np

from flaxner.config import TrainConfig


def initialize(tc: TrainConfig) -> None:
    """Join the multi-host job (`jax.distributed.initialize` from the environment) when `train.distributed` is
    set and this process has not joined yet."""
    if tc.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def is_primary() -> bool:
    """Whether this process writes the run folder's files (metrics, model, card, summary); every process saves
    its part of the orbax checkpoints."""
    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """True when any host's `flag` is True; called on every host at the same step boundaries."""
    return bool(flag)


def fetch(x) -> np.ndarray:
    """The full value of a (global) array on this host."""
    return np.asarray(jax.device_get(x))
