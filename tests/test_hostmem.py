"""flaxner.hostmem: XLA's big per-call scratch stays mapped instead of page-faulting in on every call."""

import os
import platform
import subprocess
import sys

import pytest

# A jitted call whose scratch (a 64 MB sorted copy) is over glibc's mmap threshold: page faults per call.
PROBE = """
import resource
import sys
from flaxner import hostmem
if sys.argv[1:] == ["tune"]:
    hostmem.tune()
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sort(a * 2.0)[:4])
a = jnp.ones(16 * 2**20, jnp.float32)
f(a).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(a).block_until_ready()
print(hostmem.status(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 3, sep="|")
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def probe(malloc: str) -> tuple[str, float]:
    env = {**os.environ, "FLAXNER_MALLOC": malloc, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", PROBE, "tune"], env=env, capture_output=True, text=True, check=True)
    status, faults = out.stdout.strip().splitlines()[-1].split("|")
    return status, float(faults)


@pytest.mark.slow
@glibc
def test_tune_stops_per_call_page_faults():
    tuned_status, tuned = probe("")
    system_status, system = probe("system")
    assert tuned_status == "tuned"
    assert system_status.startswith("off")
    # 64 MB is 16,384 pages: glibc's default maps (and faults) it in again on every call
    assert system > 16_000
    assert tuned < system / 3


def test_opt_out_and_idempotence(monkeypatch):
    from flaxner import hostmem

    first = hostmem.tune()
    assert hostmem.tune() == first == hostmem.status()  # applied once per process
    monkeypatch.setattr(hostmem, "_state", {})
    monkeypatch.setenv("FLAXNER_MALLOC", "system")
    assert hostmem.tune() == "off (FLAXNER_MALLOC=system)"
    monkeypatch.setattr(hostmem, "_state", {})
    monkeypatch.delenv("FLAXNER_MALLOC")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert hostmem.tune() == "off (accelerator)"


def test_import_changes_no_malloc_setting():
    code = "import flaxner, flaxner.data.labels, flaxner.config; from flaxner import hostmem; print(hostmem.status())"
    env = {**os.environ, "FLAXNER_MALLOC": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "not applied"


def test_entry_point_tunes_before_jax():
    code = ("import sys; from flaxner import cli, hostmem\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(hostmem.status(), 'jax' in sys.modules)")
    env = {**os.environ, "FLAXNER_MALLOC": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    status, jax_loaded = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert jax_loaded == "False"
    assert status == ("tuned" if platform.libc_ver()[0] == "glibc" else status)
