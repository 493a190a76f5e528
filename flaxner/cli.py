"""flaxner: fine-tune BERT-family encoders for named-entity recognition on your data, and tag corpora with them.

  flaxner train --config quickstart --output-dir runs/q        train (configs/base.yaml lists every key)
  flaxner eval --model runs/q --split test                    score a trained model
  flaxner tag corpus.jsonl --model runs/q                     tag a JSONL or text corpus
  flaxner fetch minilm                                        the offline MiniLM of --config quickstart
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from flaxner import interrupts
from flaxner.config import ConfigError, as_options, load_config
from flaxner.models import minilm
from flaxner.tagging.options import TAG_OPTIONS, add_tag_arguments, tag_child_args  # noqa: F401 (cli.TAG_OPTIONS)


TRAIN_EPILOG = """\
Every key and its default is in configs/base.yaml (shipped in the package; `--config NAME` finds
quickstart, minilm-conll2003, mbert-conll2003, tiny); KEY=VALUE overrides any of them.

Your own data (README, "Your own data"):
  data.source=FOLDER                      train/valid/test files: CoNLL columns (.txt, .conll) or JSON Lines
  data.train_file=F data.validation_file=F  split files named directly
  data.source=HUB_NAME data.dataset_config=CFG   a Hugging Face dataset (needs the network)
  data.scheme=auto|iob2|iob1|bioes|io     tag scheme (auto detects); data.labels=[O,B-X,I-X]  fixed inventory
Labels come from the train split. Offline, use --config quickstart or model.name=minilm."""


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/mbert-conll2003.yaml",
                   help="YAML config (path, or the name of one in configs/); default: the seed recipe")
    p.add_argument("--output-dir", default=None, help="run folder (default runs/<config name>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last intact checkpoint (a finished run: nothing "
                        "to do); training keys must match its config.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --output-dir (without it, a folder holding a run is refused)")
    g = p.add_argument_group("multi-host (each sets train.distributed=true; unset ones are detected from "
                             "SLURM, Open MPI, Kubernetes or cloud TPU)")
    g.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's host and a free port")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes (hosts) in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=1")


def _launch_overrides(args: argparse.Namespace) -> list[str]:
    """The multi-host flags as config overrides (after the KEY=VALUE ones, so the flags win)."""
    given = {k: getattr(args, k) for k in ("coordinator_address", "num_processes", "process_id")
             if getattr(args, k) is not None}
    # json.dumps quotes the address, so YAML cannot read HOST:PORT as anything but a string
    return [f"train.{k}={json.dumps(v)}" for k, v in given.items()] + (["train.distributed=true"] if given else [])


def cmd_train(args: argparse.Namespace) -> int:
    from flaxner.config import resolve_config_path

    if args.resume and not args.output_dir:
        raise ConfigError("--resume needs --output-dir, the run folder to continue")
    path = args.config
    if args.resume and args.config == "configs/mbert-conll2003.yaml":
        # A resumed run rebuilds exactly the config it was started with.
        from flaxner.rundir import RunDir

        saved = RunDir(args.output_dir).config
        path = saved if saved.is_file() else path
    cfg = load_config(resolve_config_path(path), args.overrides + _launch_overrides(args))
    from flaxner.training.setup import check_inputs

    check_inputs(cfg, args.resume)  # before the heavy imports below
    from flaxner.training.train import Interrupted, train

    try:
        summary = train(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 128 + e.signum
    from flaxner.training.export import final_report

    print(final_report(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from flaxner.training.setup import check_split
    from flaxner.config import DataConfig

    data = DataConfig(source=args.data) if args.data else None
    check_split(args.model, args.split, data)  # a misspelt split or a bad line: said before JAX and the model load
    from flaxner.training.evaluate import predict_split
    # Every sentence of the split unless --limit says otherwise (a run's own data.limit cut its training only).
    try:
        with interrupts.PromptExit("eval", "while loading, compiling or scoring; nothing written"):
            out = predict_split(args.model, split=args.split, limit=args.limit or 0, data=data,
                                batch_size=args.batch_size, views=args.context_views)
    except ConfigError as e:
        given = {"train.eval_batch_size": "--batch-size", "data.limit": "--limit" if args.limit is not None else "",
                 "data.context_views": "--context-views"}
        raise as_options(e, {k: v for k, v in given.items() if v}) from None
    from flaxner.training.export import per_type_table

    print(f"{args.split}: {len(out.gold)} sentences\n{per_type_table(out.metrics)}", file=sys.stderr)
    print(json.dumps({"model": str(args.model), "split": args.split, "sentences": len(out.gold), **out.metrics},
                     indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """`flaxner data`: the run's data as training would read it (inventory, counts, lengths), without a model."""
    from flaxner.config import resolve_config_path
    from flaxner.data.report import print_report

    print_report(load_config(resolve_config_path(args.config), args.overrides).data)
    return 0




def cmd_tag(args: argparse.Namespace) -> int:
    """`flaxner tag`; an interrupt (SIGINT, SIGTERM) is one line saying what was committed, exit 128 + signal."""
    import signal

    try:
        return _tag(args)
    except KeyboardInterrupt as e:  # tag_file's TagInterrupted says what was committed and how to go on
        if args.verbose:
            raise
        signum = getattr(e, "signum", signal.SIGINT)
        msg = str(e) if isinstance(e.args[0] if e.args else None, str) else \
            f"interrupted by {signal.Signals(signum).name} before tagging began"
        print(f"flaxner tag: {msg}", file=sys.stderr)
        return 128 + signum


def _tag(args: argparse.Namespace) -> int:
    """Check the input, the output and the model before any work, tag, print the summary (one JSON line)."""
    import signal
    import threading
    from pathlib import Path

    from flaxner.tagging.checks import tag_overrides

    overrides = tag_overrides(args.model, vars(args))
    for flags, kw, engines in TAG_OPTIONS:  # what this engine does not take is refused, not ignored
        given = getattr(args, flags[-1].lstrip("-").replace("-", "_")) != kw.get("default", kw.get("action") and False)
        if args.engine == "ray" and "r" not in engines and given:
            raise ValueError(f"{flags[-1]} does not go with --engine ray (it slices, commits and retries by itself)")
    if args.engine == "ray":
        from flaxner.tagging import raytag

        return raytag.run_cli(args)
    if len(args.input) > 1:
        raise ValueError(f"{len(args.input)} inputs: one at a time, or several (and globs) with --engine ray")
    args.input = args.input[0]

    from flaxner.tagging.reading import MAX_LINE_BYTES, MAX_PARTS, RESUME_STDIN, parse_shard
    from flaxner.tagging.formats import checked_output

    if args.input != "-" and not Path(args.input).is_file():
        raise FileNotFoundError(f"{args.input}: no such input file")
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"{args.model}: no such model folder")
    parse_shard(args.shard)
    if not 1 <= args.processes <= MAX_PARTS:
        raise ValueError(f"--processes {args.processes}: must be in [1, {MAX_PARTS}]")
    if args.max_line_bytes is not None and args.max_line_bytes < 0:
        raise ValueError(f"--max-line-bytes {args.max_line_bytes}: must be 0 (no cap) or more")
    if args.commit_every < 0:
        raise ValueError(f"--commit-every {args.commit_every}: must be 0 (after every line) or more seconds")
    if args.resume and args.input == "-" and not args.resume_stdin:
        raise ValueError(RESUME_STDIN)
    output, spec = checked_output(args)  # -o, or the input's name with the format's suffix
    if args.processes > 1:  # this parent imports no JAX: the children do the tagging
        from flaxner.tagging.processes import run_processes

        return run_processes(args, tag_child_args(args))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupts.raise_signal)  # a TERM commits what was written, as Ctrl-C does
    from flaxner.tagging.tagger import Tagger

    with interrupts.PromptExit("tag", "while loading the model; nothing written"):
        tagger = Tagger.from_pretrained(args.model, text_field=args.text_field, **overrides)
    progress = not args.no_progress and not (output == "-" and sys.stdout.isatty())  # no bar amid stdout lines
    summary = tagger.tag_file(args.input, output, id_field=args.id_field, keep_fields=args.keep_fields,
                              fmt=args.input_format, shard=args.shard, resume=args.resume, overwrite=args.overwrite,
                              resume_stdin=args.resume_stdin, on_error=args.on_error, progress=progress,
                              commit_every=args.commit_every, output_format=spec,
                              max_line_bytes=MAX_LINE_BYTES if args.max_line_bytes is None else args.max_line_bytes)
    print(summary.printed(sys.stderr.isatty()), file=sys.stderr)
    if summary.input_damaged:
        print(f"flaxner tag: error: {summary.input_damaged} ({summary.lines} lines tagged into {output})",
              file=sys.stderr)
        return 1
    if summary.field_missing:
        print(f"flaxner tag: error: {summary.field_missing}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flaxner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune a BERT for NER", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fine-tune a BERT-family encoder for NER on CoNLL-2003 or your own data.",
                       epilog=TRAIN_EPILOG)
    _train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="score a trained model on a split of its data (or --data)")
    p.add_argument("--model", required=True, help="run folder or HF model folder")
    p.add_argument("--split", default="validation")
    p.add_argument("--data", default=None,
                   help="data.source: builtin, a CoNLL folder or a hub name (default: the run's, else builtin)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="score only the first N sentences (default: all)")
    p.add_argument("--context-views", type=lambda s: tuple(v for v in s.split(",") if v), default=None,
                   metavar="VIEWS", help="neighbours: read each sentence once per view (comma-separated: full, left, "
                                         "right, none), words labelled by the mean (default: the run's)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("data", help="what the data of a config holds (labels, counts per type and split, lengths), "
                                    "without loading a model")
    p.add_argument("--config", default="configs/mbert-conll2003.yaml", help="config YAML (path or packaged name)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.source=my_data/")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("tag", help="tag a JSONL/text corpus with a trained model")
    add_tag_arguments(p)
    p.set_defaults(func=cmd_tag)
    minilm.add_command(sub)
    return parser


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with `KEY=VALUE` overrides allowed anywhere on it, before or after the options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all(_OVERRIDE.match(x) for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `flaxner` command."""
    from flaxner import hostmem

    hostmem.tune()  # before anything starts JAX's CPU client
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found": the core has none
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:  # config, data, model-loading errors: one clear line, no traceback
        if args.verbose:
            raise
        print(f"flaxner {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if argv is None and args.command == "tag":  # the process' own command line: it exits next
            _fast_exit()


def _fast_exit() -> None:
    """Spare the exiting interpreter its last garbage collection over every object JAX, flax and the model made
    (0.15-0.2 s of a one-line `flaxner tag`): frozen objects are not traversed. `flaxner tag` has closed its
    output by then; the interpreter still joins threads, runs atexit handlers and flushes stdout/stderr. Never for
    an in-process call (`main([...])` from Python), whose objects must stay collectable."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
