"""End-to-end wall time of a recipe: `flaxner train --config X` against the same recipe through the HF Trainer
(bench.hf_trainer_reference), each in its own process, from process start to the last evaluation.

Split: startup (interpreter and imports), load (tokenizer, data, model), compile (the train and evaluation steps'
XLA compilations, from JAX's own events; flaxner only), train, evaluate (per-epoch evaluations), save + test
(checkpoints, the exported model, and the test split when the config asks for it).
flaxner starts with an empty compilation cache; --warm adds a second flaxner run that reuses it.

    python -m bench.e2e --config quickstart
    python -m bench.e2e --config minilm-conll2003 --warm
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import (CompileCounter, bench_command, header, markdown_table, median,  # noqa: E402
                          peak_rss_mib, run_child, write_json)

HERE = Path(__file__).resolve().parent


def flaxner_worker(args) -> None:
    """`flaxner train` in this process, with XLA compilations counted."""
    counter = CompileCounter()
    from flaxner.cli import main as cli_main
    from flaxner.training.evaluate import EVAL_STEP_NAME  # compiles of other functions count as load
    from flaxner.training.step import TRAIN_STEP_NAMES

    rc = cli_main(["train", "--config", args.config, "--output-dir", args.output_dir, *args.overrides])
    s = json.loads((Path(args.output_dir) / "summary.json").read_text())
    n_train, c_train = counter.since(match=TRAIN_STEP_NAMES, background=False)
    n_eval, c_eval = counter.since(match=EVAL_STEP_NAME, background=False)
    n_ahead, c_ahead = counter.since(match=(*TRAIN_STEP_NAMES, EVAL_STEP_NAME), background=True)
    n_all, _ = counter.since()
    # train() times its epochs and their evaluations; the rest of its total is saving and the test split.
    # "compile" is the time the run stood still for the train and evaluation steps' compilations: those it ran
    # itself (evaluation ones counted wherever they happen, mostly the first evaluation) and its waits for the
    # ones under way on the compile threads (train.compile_workers), whose own time overlaps training and is
    # reported apart; the small jits of model initialisation stay in load.
    w_train, w_eval = s.get("compile_wait_train_s", 0.0), s.get("compile_wait_eval_s", 0.0)
    out = {"rc": rc, "run_s": s["total_s"], "load_s": s["load_s"], "compiles": n_train + n_eval + n_ahead,
           "xla_compiles": n_all, "compile_s": c_train + c_eval + w_train + w_eval, "train_compiles": n_train,
           "eval_compiles": n_eval, "ahead_compiles": n_ahead, "ahead_compile_s": c_ahead,
           "train_s": s["train_s"] - c_train - w_train, "eval_s": max(s["eval_s"] - c_eval - w_eval, 0.0),
           "save_test_s": s["total_s"] - s["load_s"] - s["train_s"] - s["eval_s"],
           "compile_by_function": {k: [counter.count.get(k, 0), round(v, 2)] for k, v in counter.seconds.items()},
           "history": s["history"], "test": {k: s["test"][k] for k in ("precision", "recall", "f1", "accuracy")}
           if "test" in s else None, "steps": s["steps"], "compiled_train_shapes": s["compiled_train_shapes"],
           "peak_rss_mib": peak_rss_mib()}
    write_json(args.json, out)


def flaxner_row(r: dict) -> dict:
    """Compilation split out of load / train / evaluate; startup is what the process spent before train()."""
    return {**r, "startup_s": r["wall_s"] - r["run_s"]}


def hf_row(r: dict) -> dict:
    return {"startup_s": r["wall_s"] - r["total_s"], "load_s": r["load_s"], "compiles": 0, "compile_s": 0.0,
            "train_s": r["train_s"], "eval_s": r["eval_s"], "save_test_s": r["save_s"] + r.get("test_s", 0.0),
            "history": r["history"],
            "test": r.get("test"), "peak_rss_mib": r["peak_rss_mib"], "wall_s": r["wall_s"]}


def medians(runs: list[dict]) -> dict:
    """Median of every number over repeated runs; the rest from the first run."""
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = median([r[k] for r in runs if k in r])
    out["runs"] = len(runs)
    return out


COLUMNS = [("contender", "", ""), ("wall_s", "wall s", ".1f"), ("startup_s", "startup", ".1f"),
           ("load_s", "load", ".1f"), ("compile_s", "compile", ".1f"), ("train_s", "train", ".1f"),
           ("eval_s", "evaluate", ".1f"), ("save_test_s", "save + test", ".1f"), ("f1", "last eval F1", ".4f"),
           ("peak_rss_mib", "peak RSS MiB", ",.0f")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="config(s) to run (default: quickstart)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each contender; medians are reported")
    p.add_argument("--warm", action="store_true", help="also a flaxner run reusing the filled compile cache")
    p.add_argument("--skip-hf", action="store_true", help="flaxner only")
    p.add_argument("--hf-group-by-length", action="store_true", help="the reference with group_by_length")
    p.add_argument("--json", default="", help="default bench/out/e2e.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both contenders")
    args = p.parse_args(argv)
    if args.worker:
        args.config = args.config[0]
        flaxner_worker(args)
        return 0

    info = header()
    report, failed = {}, False
    for config in args.config or ["quickstart"]:
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            cache = f"{tmp}/jax-cache"
            plan = [("flaxner (cold compile)", [])] * args.repeats
            plan += [("flaxner (warm cache)", [])] * (args.repeats if args.warm else 0)
            runs: dict[str, list[dict]] = {}
            for i, (name, _) in enumerate(plan):
                if name.endswith("(cold compile)"):
                    cache = f"{tmp}/jax-cache-{i}"  # every cold run starts empty; the warm ones reuse the last
                cmd = bench_command("e2e", "--worker", "--config", config, "--output-dir", f"{tmp}/run{i}",
                                    "--json", f"{tmp}/f{i}.json", "--", *args.overrides,
                                    f"train.compilation_cache={cache}")
                r = run_child(cmd, f"{tmp}/f{i}.json")
                failed |= "error" in r
                if "error" not in r:
                    runs.setdefault(name, []).append(flaxner_row(r))
            if not args.skip_hf:
                for i in range(args.repeats):
                    cmd = bench_command("hf_trainer_reference", "--config", config, "--json", f"{tmp}/hf{i}.json",
                                        *(["--group-by-length"] if args.hf_group_by_length else []),
                                        "--", *args.overrides)
                    r = run_child(cmd, f"{tmp}/hf{i}.json")
                    failed |= "error" in r
                    if "error" not in r:
                        runs.setdefault("HF Trainer (PyTorch)", []).append(hf_row(r))
            for name, rs in runs.items():
                rows[name] = medians(rs)
                rows[name]["f1"] = rows[name]["history"][-1]["f1"] if rows[name]["history"] else None
        report[config] = rows
        print(f"\n## End-to-end: {config} {' '.join(args.overrides)} (median of {args.repeats})\n")
        print(markdown_table([{"contender": k, **v} for k, v in rows.items()], COLUMNS))
        cold, hf = rows.get("flaxner (cold compile)"), rows.get("HF Trainer (PyTorch)")
        if cold and hf:
            print(f"\nHF Trainer wall / flaxner wall = {hf['wall_s'] / cold['wall_s']:.2f}x")
    json_path = Path(args.json or HERE / "out" / "e2e.json")
    write_json(json_path, {**info, "configs": report, "overrides": args.overrides, "repeats": args.repeats})
    print(f"\nfigures: {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
