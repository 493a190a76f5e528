"""`flaxner train / eval / tag`: parse the command line and call one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from flaxner.config import ConfigError, load_config


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/mbert-conll2003.yaml",
                   help="YAML config (path, or the name of one in configs/); default: the seed recipe")
    p.add_argument("--output-dir", default=None, help="run folder (default runs/<config name>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
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
        from pathlib import Path

        saved = Path(args.output_dir) / "config.yaml"
        path = saved if saved.is_file() else path
    cfg = load_config(resolve_config_path(path), args.overrides + _launch_overrides(args))
    from flaxner.train import Interrupted, train

    try:
        summary = train(cfg, args.output_dir, resume=args.resume)
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 128 + e.signum
    from flaxner.export import epoch_table

    print("\n" + epoch_table(summary["history"]))
    if "test" in summary:
        t = summary["test"]
        print(f"\ntest: precision {t['precision']:.4f} recall {t['recall']:.4f} f1 {t['f1']:.4f} "
              f"accuracy {t['accuracy']:.4f}")
    print(f"\nrun folder: {summary['run_dir']}  (model in {summary['run_dir']}/model)  "
          f"compiled train shapes: {len(summary['compiled_train_shapes'])}  total {summary['total_s']:.0f}s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from flaxner.analysis import predict_split
    from flaxner.config import DataConfig

    data = DataConfig(source=args.data) if args.data else None
    out = predict_split(args.model, split=args.split, limit=args.limit, data=data, batch_size=args.batch_size)
    print(json.dumps({"model": str(args.model), "split": args.split, "sentences": len(out.gold), **out.metrics},
                     indent=2))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from flaxner.tagger import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flaxner", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune a BERT for NER")
    _train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="score a trained model on a CoNLL split")
    p.add_argument("--model", required=True, help="run folder or HF model folder")
    p.add_argument("--split", default="validation")
    p.add_argument("--data", default=None,
                   help="data.source: builtin, a CoNLL folder or a hub name (default: the run's, else builtin)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="score only the first N sentences (0: all)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("tag", help="tag a JSONL/text corpus with a trained model")
    from flaxner.tagger import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_tag)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `flaxner` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "transformers.modeling_flax_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:  # config, data, model-loading errors: one clear line, no traceback
        if args.verbose:
            raise
        print(f"flaxner {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
