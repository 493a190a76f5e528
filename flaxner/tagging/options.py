"""`flaxner tag`'s options: one table (`TAG_OPTIONS`) that builds the parser, says which engines take each option
(third column: "l" local, "p" --processes children, "r" --engine ray, which refuses the others) and gives a
--processes child its parent's options (`tag_child_args`). No JAX: the --processes parent reads it."""

from __future__ import annotations

import argparse

from flaxner.config import Aggregation, Context, InputFormat, OnError, OutputFormat, TagDtype, Words, choices


def _views(text: str) -> tuple[str, ...]:
    """--context-views full,none: the views as a tuple (checked with the rest of the tag config)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_thresholds(text: str) -> tuple[float, ...]:
    """--sentence-thresholds 0.2,0.5,0.8: the probabilities as a tuple (checked with the rest of the tag config)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated probabilities, got {text!r}") from None


# The options of `flaxner tag`: (flags, argparse keywords, engines). Engines: l the local engine, p passed on to
# each child of --processes, r --engine ray (an option without r is refused there).
TAG_OPTIONS: list[tuple[tuple[str, ...], dict, str]] = [
    (("--model",), dict(required=True, help="run folder of `flaxner train`, or an HF BERT token-classification "
                                            "folder"), "lr"),
    (("-o", "--output"), dict(default=None, help="output file (.gz: gzip); default: INPUT with .entities.jsonl "
                                                 "(stdout for stdin); - for stdout"), "lr"),
    (("--overwrite",), dict(action="store_true", help="replace an existing output (refused otherwise)"), "lr"),
    (("--text-field",), dict(default="text", help="the JSONL field holding the text (default: text)"), "lpr"),
    (("--id-field",), dict(default="id", help="copied as `id`; the line number when absent"), "lpr"),
    (("--keep-fields",), dict(action="store_true", help="copy the input fields into each output line (an input "
                                                         "id/entities/error/warning is kept as input_<name>)"),
     "lpr"),
    (("--input-format",), dict(default="auto", choices=choices(InputFormat),
                               help="auto: .txt/.txt.gz is text, one document a line; else JSONL"), "lpr"),
    (("--format",), dict(default="jsonl", choices=choices(OutputFormat), help="output format (docs/tagging.md)"), "lpr"),
    (("--model-version",), dict(help="label-studio predictions' model_version (default: the run's name)"), "lpr"),
    (("--staged",), dict(action="store_true", help=argparse.SUPPRESS), "l"),  # a --processes child of a whole file
    (("--aggregation",), dict(choices=choices(Aggregation), default=None,
                              help="sub-token predictions -> word label (default: first, as trained)"), "lpr"),
    (("--words",), dict(choices=choices(Words), default=None,
                        help="conll: split text into words as CoNLL-2003 was tokenized, the words training labels "
                             "(default); tokenizer: the tokenizer's own words, as HF's pipeline"), "lpr"),
    (("--context",), dict(choices=choices(Context), default=None,
                          help="what a row sees (default: what the run trained on): none: each sentence of a text "
                               "on its own; neighbours: with --context-size sub-tokens each side; document: windows "
                               "across sentences"), "lpr"),
    (("--context-size",), dict(type=int, default=None, help="sub-tokens of context each side for neighbours"),
     "lpr"),
    (("--context-views",), dict(type=_views, default=None, metavar="VIEWS",
                                help="neighbours: read each sentence once per view (comma-separated: full, left, "
                                     "right, none) and label words by the mean (default: the run's "
                                     "data.context_views)"), "lpr"),
    (("--sentence-thresholds",), dict(type=parse_thresholds, default=None, metavar="P,...",
                                      help="none/neighbours, a run with learnt sentence starts: cut texts into "
                                           "sentences at each probability and label tokens by the mean (default "
                                           "0.1,0.3,0.5,0.7,0.9)"), "lpr"),
    (("--segment-length",), dict(type=int, default=None,
                                 help="none/neighbours: most sub-tokens a row predicts; a longer sentence is windowed "
                                      "(default: what the run's training sentences held)"), "lpr"),
    (("--document-field",), dict(default=None, metavar="FIELD",
                                 help="consecutive JSONL lines with the same value of FIELD are one document for "
                                      "context (each output line stays its input line's); shards, --processes and "
                                      "Ray slices never cut one"), "lpr"),
    (("--max-length",), dict(type=int, default=None, help="sub-tokens per window, specials included"), "lpr"),
    (("--stride",), dict(type=int, default=None, help="sub-tokens shared by neighbouring windows"), "lpr"),
    (("--batch-size",), dict(type=int, default=None, help="rows per batch when --batch-tokens is 0"), "lpr"),
    (("--batch-tokens",), dict(type=int, default=None, help="padded tokens per batch (rows = this / length)"),
     "lpr"),
    (("--pack-length",), dict(type=int, default=None,
                              help="windows this short share rows of this length, each seeing only itself "
                                   "(default 64; 0: one window a row)"), "lpr"),
    (("--lookahead",), dict(type=int, default=None, help="documents read ahead and sorted by length"), "lpr"),
    (("--dtype",), dict(default=None, choices=choices(TagDtype),
                        help="compute dtype (auto: bfloat16 on accelerators; on CPU mixed where it has AMX, else float32; "
                             "mixed: bfloat16 matrix products into float32)"), "lpr"),
    (("--max-line-bytes",), dict(type=int, default=None, metavar="BYTES",
                                 help="a longer line gets an error record, unread (default 1000000; 0: no cap)"),
     "lpr"),
    (("--shard",), dict(default=None, metavar="I/N", help="tag only slice I of N (outputs concatenate)"), "l"),
    (("--resume",), dict(action="store_true", help="continue an interrupted run from its last committed line "
                                                   "(refused if the input has changed)"), "lr"),
    (("--resume-stdin",), dict(action="store_true", help="with --resume and stdin input: vouch that stdin gives "
                                                         "the same lines again (their CRC is checked)"), "l"),
    (("--commit-every",), dict(type=float, default=5.0, metavar="SECONDS",
                               help="make the written lines durable (and resumable) this often (default 5; 0: "
                                    "after every line)"), "lp"),
    (("--on-error",), dict(default="record", choices=choices(OnError),
                           help="record: bad lines get an `error` field; fail: stop at the first"), "lp"),
    (("--no-progress",), dict(action="store_true", help="no progress bar on stderr (it is off anyway when the "
                                                        "output is a terminal's stdout)"), "lr"),
    (("--processes",), dict(type=int, default=1, metavar="N",
                            help="tag in N processes at once, one slice of the input each, then join their outputs "
                                 "in order (one process' Python work caps it well below a GPU's pace; see "
                                 "flaxner/tagging/processes.py)"), "l"),
]


def add_tag_arguments(p: argparse.ArgumentParser) -> None:
    from flaxner.tagging import raytag

    p.add_argument("input", nargs="+", help="JSONL (.jsonl, .jsonl.gz), text with one document per line (.txt), or "
                                            "- for stdin (several files or globs: --engine ray)")
    for flags, kw, _ in TAG_OPTIONS:
        p.add_argument(*flags, **kw)
    raytag.add_arguments(p)


def tag_child_args(args: argparse.Namespace) -> list[str]:
    """The options a child of --processes gets from its parent's command line, as given."""
    out: list[str] = []
    for flags, kw, engines in TAG_OPTIONS:
        value = getattr(args, flags[-1].lstrip("-").replace("-", "_"), None)
        if "p" not in engines or value is None or value is False:
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        out += [flags[-1]] if kw.get("action") == "store_true" else [flags[-1], text]
    return out
