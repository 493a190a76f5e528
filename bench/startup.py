"""Start-up of `flaxner tag` on a one-line file: wall and CPU seconds of the whole command, and where they go.

    python -m bench.startup --model RUN_OR_MODEL_DIR [--repeats 7] [--breakdown]

Each run is a fresh `python -m flaxner.cli tag one.jsonl --model M -o out-N.jsonl` (one warm-up run first, which
fills JAX's persistent compilation cache and flaxner's tokenizer cache); wall is timed around the child, CPU is
its user + system time (`getrusage` of children). The outputs of all runs must be the same bytes.

`--breakdown` runs the command once more under `python -X importtime`, with timers around the tagger's steps
(config and model load, tokenizer, parameters to the device, the forward's tracing, lowering and compile-cache
lookup, tagging, exit) and JAX's compile events, and prints those phases, the import time of each top-level
package and which heavy packages were imported. The timers wrap functions by name and skip the ones a version of
flaxner does not have, so the same script measures a checkout before a change and after it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HEAVY = ("torch", "transformers", "datasets", "sklearn", "scipy", "pandas", "pyarrow", "ray", "optax", "orbax",
         "huggingface_hub", "PIL", "tqdm", "yaml", "safetensors")
LINE = '{"text": "John lives in Berlin."}\n'
# (module, attribute[, attribute]) timed in the child when present; nested calls are timed too (their parents
# include them).
WRAP = [("flaxner.tagging.checks", "run_config"), ("flaxner.models.loading", "load_trained"),
        ("flaxner.models.loading", "load_trained_model"), ("flaxner.models.loading", "read_config"),
        ("flaxner.models.loading", "load_params"), ("flaxner.models.loading", "read_weights"),
        ("flaxner.models.loading", "load_tokenizer"), ("flaxner.models.tokenizer", "load_tag_tokenizer"),
        ("flaxner.tagging.forward", "CompiledForward", "__init__"), ("flaxner.tagging.forward", "CompiledForward", "run"),
        ("flaxner.tagging.tagger", "Tagger", "__init__"), ("flaxner.tagging.tagger", "Tagger", "tag_file")]


def _child(argv: list[str]) -> int:
    """Run flaxner's CLI in this process with timers; write the phases as JSON to $STARTUP_JSON."""
    t_launch = float(os.environ["STARTUP_LAUNCH"])
    phases: list[tuple[str, float, float]] = [("interpreter up", time.time() - t_launch, time.process_time())]
    t0, c0 = time.perf_counter() - phases[0][1], 0.0
    timed: dict[str, list[float]] = {}
    events: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        phases.append((name, time.perf_counter() - t0, time.process_time() - c0))

    import importlib

    from flaxner.cli import main
    mark("flaxner.cli imported")

    def wrap(owner, attr: str, label: str) -> None:
        f = owner.__dict__[attr]
        is_static = isinstance(f, staticmethod)
        fn = f.__func__ if is_static else f

        def timed_fn(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                timed.setdefault(label, []).append(time.perf_counter() - w)
                timed.setdefault(label + " (cpu)", []).append(time.process_time() - c)
        setattr(owner, attr, staticmethod(timed_fn) if is_static else timed_fn)

    for mod_name, *path in WRAP:
        try:
            owner = importlib.import_module(mod_name)
        except ImportError:
            continue
        for name in path[:-1]:
            owner = getattr(owner, name, None)
        if owner is not None and path[-1] in getattr(owner, "__dict__", {}):
            wrap(owner, path[-1], ".".join([mod_name.rsplit(".", 1)[-1], *path]))
    mark("timers set (imports of the wrapped modules)")
    if "jax" in sys.modules:
        import jax

        jax.monitoring.register_event_duration_secs_listener(lambda e, d, **_: events.append((e, d)))
        jax.monitoring.register_event_listener(lambda e, **_: events.append((e, 0.0)))
    sys.argv = ["flaxner", *argv]
    rc = main()  # as the console script calls it (its exit path differs from main([...]))
    mark("main returned")
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    with open(os.environ["STARTUP_JSON"], "w") as f:
        json.dump({"phases": phases, "timed": timed, "events": events, "heavy": heavy, "rc": rc,
                   "modules": len(sys.modules)}, f)
    return rc


def _importtime(stderr: str) -> dict[str, float]:
    """Self import seconds summed by top-level package, from `-X importtime` lines."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            self_us, _, name = line[len("import time:"):].split("|", 2)
            top = name.strip().split(".")[0]
            out[top] = out.get(top, 0.0) + int(self_us) / 1e6
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _run(cmd: list[str], env: dict, cwd: str) -> tuple[float, float, str]:
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**env, "STARTUP_LAUNCH": repr(time.time())}
    w = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - w
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run folder or HF token-classification folder")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--breakdown", action="store_true", help="also one instrumented run under -X importtime")
    p.add_argument("--work", default=None, help="folder for the input and outputs (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the figures here (default bench/out/startup.json)")
    args, extra = p.parse_known_args(argv)
    import tempfile
    from pathlib import Path

    from bench.common import REPO, header, median, write_json

    info = header()
    work = Path(args.work or tempfile.mkdtemp(prefix="flaxner-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "one.jsonl").write_text(LINE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}

    def cmd(n: int, *pre: str) -> list[str]:
        return [sys.executable, *pre, "tag", str(work / "one.jsonl"), "--model", str(Path(args.model).resolve()),
                "-o", str(work / f"out-{n}.jsonl"), "--no-progress", *extra]

    _run(cmd(0, "-m", "flaxner.cli"), env, str(work))  # warm-up: fills the caches
    walls, cpus = [], []
    for n in range(1, args.repeats + 1):
        wall, cpu, _ = _run(cmd(n, "-m", "flaxner.cli"), env, str(work))
        walls.append(wall)
        cpus.append(cpu)
        print(f"run {n}: wall {wall:.2f} s, cpu {cpu:.2f} s", flush=True)
    outputs = {(work / f"out-{n}.jsonl").read_bytes() for n in range(args.repeats + 1)}
    if len(outputs) != 1:
        raise SystemExit("the runs' outputs differ")
    res = {**info, "model": args.model, "wall_s": walls, "cpu_s": cpus, "wall_median_s": median(walls),
           "cpu_median_s": median(cpus), "output": outputs.pop().decode()}
    print(f"median of {args.repeats}: wall {res['wall_median_s']:.2f} s, cpu {res['cpu_median_s']:.2f} s")
    if args.breakdown:
        res["breakdown"] = breakdown(cmd(99, "-X", "importtime", "-m", "bench.startup", "--child"), env, work)
    write_json(args.json or REPO / "bench" / "out" / "startup.json", res)
    return 0


def breakdown(command: list[str], env: dict, work) -> dict:
    wall, cpu, stderr = _run(command, {**env, "STARTUP_JSON": str(work / "phases.json")}, str(work))
    child = json.loads((work / "phases.json").read_text())
    print(f"\ninstrumented run: wall {wall:.2f} s, cpu {cpu:.2f} s (timers and -X importtime add a little)")
    print(f"{'phase (from the launch)':48s} {'at s':>6s} {'cpu s':>6s}")
    for name, at, c in child["phases"]:
        print(f"{name:48s} {at:6.3f} {c:6.3f}")
    print(f"{'exited':48s} {wall:6.3f}")
    print("\ntimed calls (wall s each call; cpu)")
    for name, ts in child["timed"].items():
        if not name.endswith("(cpu)"):
            cs = child["timed"][name + " (cpu)"]
            print(f"  {name:44s} " + ", ".join(f"{t:.3f} ({c:.3f})" for t, c in zip(ts, cs, strict=True)))
    sums: dict[str, list[float]] = {}
    for e, d in child["events"]:
        s = sums.setdefault(e.rsplit("/", 1)[-1], [0, 0.0])
        s[0], s[1] = s[0] + 1, s[1] + d
    print("\nJAX events (count, seconds)")
    for e, (n, d) in sums.items():
        print(f"  {e:44s} {n:4d} {d:7.3f}")
    imports = _importtime(stderr)
    print(f"\nimport self-time by package (s), {sum(imports.values()):.2f} in all; {child['modules']} modules")
    for top, s in list(imports.items())[:15]:
        print(f"  {top:30s} {s:6.3f}")
    print(f"\nheavy packages imported: {', '.join(child['heavy']) or 'none'}")
    return {"wall_s": wall, "cpu_s": cpu, **child, "events": sums, "imports": imports}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(sys.argv[2:]))
    sys.exit(main())
