"""Several processes (hosts) training one model: start-up, who writes the run folder, agreed stops, gathers.

Every function works unchanged in a single process (each is then a no-op or a plain copy). With several
processes, every host must call `agree`, `fetch`, `check_same_dir` and `broadcast` at the same points and in the
same order: they are collective. Host-to-host agreement goes through the key-value store and barriers of
`jax.distributed`'s coordination service (host RPCs, no device work), so it never waits for queued device steps.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from flaxner.config import TrainConfig

log = logging.getLogger(__name__)

# How long a host waits for the others at a collective point. Between two step boundaries the hosts may be
# evaluating, saving or compiling, so this is generous; a host that dies is reported sooner by the coordination
# service's heartbeat.
WAIT_S = 3600
# A token file written by process 0 may take a moment to appear on another host's NFS client (attribute cache).
_SEE_FILE_S = 15.0
TOKEN_FILE = ".flaxner-hosts"

_calls = {"agree": 0, "collective": 0}


def initialize(tc: TrainConfig) -> None:
    """Start multi-host JAX when `train.distributed` is set and nobody has done it yet (Ray Train's JaxTrainer
    does it itself). Unset keys are None, which lets JAX detect them (SLURM, Open MPI, Kubernetes, cloud TPU)."""
    if not tc.distributed or jax.distributed.is_initialized():
        return
    # CPU collectives across processes need gloo, jax's default for jax_cpu_collectives_implementation; a
    # setting of "none" would fail at the first collective, so say so now.
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        log.warning("jax_cpu_collectives_implementation is %r: CPU runs across processes need 'gloo'",
                    jax.config.jax_cpu_collectives_implementation)
    joined = threading.Event()
    threading.Thread(target=_join_watchdog, args=(tc, joined), name="flaxner-join-watchdog", daemon=True).start()
    # JAX's own timeout, later than the watchdog's: when it expires, its client aborts the process from C++
    try:
        jax.distributed.initialize(tc.coordinator_address or None, tc.num_processes or None,
                                   None if tc.process_id < 0 else tc.process_id,
                                   initialization_timeout=tc.distributed_timeout + 60)
    finally:  # an error of its own is reported as it is
        joined.set()
    log.info("process %d of %d, %d local device(s)", jax.process_index(), jax.process_count(),
             jax.local_device_count())


def _join_watchdog(tc: TrainConfig, joined: threading.Event) -> None:
    """End the process with one line when the processes have not all joined within train.distributed_timeout.
    JAX's client would end it anyway (a C++ abort and stack trace, 300 s + heartbeats later), so exiting here
    loses nothing; nothing of the run is written before everyone has joined."""
    if joined.wait(tc.distributed_timeout):
        return
    who = f"process {tc.process_id}" if tc.process_id >= 0 else "this process"
    sys.stderr.write(f"\nflaxner train: error: {who} of {tc.num_processes or 'the'} processes: they did not all join "
                     f"the coordinator {tc.coordinator_address or '(detected)'} within {tc.distributed_timeout} s "
                     f"(train.distributed_timeout): start every process with the same --coordinator-address and "
                     f"--num-processes, each with its own --process-id, or raise train.distributed_timeout\n")
    sys.stderr.flush()
    os._exit(2)


def is_primary() -> bool:
    """True on the one process that writes the run folder's own files (process 0)."""
    return jax.process_index() == 0


def _client():
    from jax._src import distributed as jd  # the coordination-service client; jax has no public handle to it

    if jd.global_state.client is None:
        raise RuntimeError(f"{jax.process_count()} processes but no jax.distributed client: "
                           "start multi-host runs with train.distributed=true")
    return jd.global_state.client


def _barrier(name: str) -> None:
    try:
        _client().wait_at_barrier(name, WAIT_S * 1000)
    except Exception as e:  # the client raises XlaRuntimeError with the coordination service's reason
        raise RuntimeError(f"process {jax.process_index()}: the other hosts did not reach {name!r} within "
                           f"{WAIT_S} s (or one of them failed): {e}") from e


def agree(flag: bool) -> bool:
    """True on every host when `flag` is True on any host, or when a preemption notice reached the cluster.

    Call it at every step boundary on every host: one barrier (~1-3 ms of host time, measured on localhost,
    hidden behind the device steps already queued), so a stop lands within one step, on the same step
    everywhere. A host that stops writes a key before the barrier; the others read the keys after it."""
    if jax.process_count() == 1:
        return bool(flag)
    n = _calls["agree"]
    _calls["agree"] += 1
    client = _client()
    if flag:
        client.key_value_set(f"flaxner/stop/{n}/{jax.process_index()}", "1")
    _barrier("flaxner/agree")  # one id, reused: the coordination service starts a new round each time
    stop = bool(client.key_value_dir_get(f"flaxner/stop/{n}/"))
    try:
        # JAX's own preemption sync (its SIGTERM notifier when no Python handler replaced it, e.g. in a Ray
        # worker thread; maintenance notices on cloud TPU): all hosts see True at the same count.
        preempted = multihost_utils.reached_preemption_sync_point(n)
    except RuntimeError:  # jax_enable_preemption_service off
        preempted = False
    return stop or preempted


def fetch(tree):
    """The full value of every array of `tree` as numpy on this host, gathering shards held by other hosts."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(one, tree)


def broadcast(text: str) -> str:
    """Process 0's `text` on every host (e.g. a run folder named after the time, which differs across hosts)."""
    if jax.process_count() == 1:
        return text
    key = f"flaxner/broadcast/{_next()}"
    if is_primary():
        _client().key_value_set(key, text)
        return text
    return _client().blocking_key_value_get(key, WAIT_S * 1000)


def _next() -> int:
    _calls["collective"] += 1
    return _calls["collective"]


def check_same_dir(path: str | Path) -> None:
    """Stop on every host with one clear error unless all hosts see process 0's folder `path` (created): process
    0 writes a random token into it and every host must read it back. orbax checkpoints and the exported model
    need one folder that all hosts share (NFS, Lustre, a bucket mount)."""
    if jax.process_count() == 1:
        return
    client, n, me = _client(), _next(), jax.process_index()
    folder = Path(path).resolve()
    token_file = folder / TOKEN_FILE
    if is_primary():
        token = secrets.token_hex(16)
        token_file.write_text(token)
        client.key_value_set(f"flaxner/dir/{n}/token", token)
        client.key_value_set(f"flaxner/dir/{n}/path", str(folder))
    token = client.blocking_key_value_get(f"flaxner/dir/{n}/token", WAIT_S * 1000)
    primary_path = client.blocking_key_value_get(f"flaxner/dir/{n}/path", WAIT_S * 1000)
    deadline = time.monotonic() + _SEE_FILE_S
    while True:
        seen = token_file.read_text().strip() if token_file.is_file() else None
        if seen == token or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if seen != token:
        client.key_value_set(f"flaxner/dir/{n}/bad/{me}", str(folder))
    _barrier(f"flaxner/dir/{n}")
    bad = sorted(client.key_value_dir_get(f"flaxner/dir/{n}/bad/"))
    _barrier(f"flaxner/dir/{n}/read")  # everyone has read the token: process 0 may remove it
    if is_primary():
        token_file.unlink(missing_ok=True)
    if bad:
        who = ", ".join(f"process {k.rsplit('/', 1)[1]} ({v})" for k, v in bad)
        raise ValueError(f"{folder}: the hosts do not share the output folder: {who} cannot see the token "
                           f"process 0 wrote into {primary_path}/{TOKEN_FILE}; give every host the same "
                           f"--output-dir on a filesystem they all mount")


class StopSignals:
    """Context manager: SIGINT/SIGTERM set `signum` (the loop saves at the next agreed step boundary and exits).

    Installed only on the main thread: elsewhere (a Ray Train worker runs train() in a thread) Python cannot
    take signals, and the host's own handling applies, e.g. JAX's SIGTERM preemption notifier, which `agree`
    reads."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.info("not on the main thread: SIGINT/SIGTERM handlers not installed")
            return self
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            # None: the old handler was installed from C (JAX's preemption notifier), which Python cannot put back
            signal.signal(s, signal.SIG_DFL if h is None else h)
