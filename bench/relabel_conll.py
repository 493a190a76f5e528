"""CoNLL-2003 with another label set, for runs on labels that are not CoNLL-2003's: drop entity types (their tags
become O), rename types, and make a new type from a rule (tokens tagged O that are numbers). Writes
train/valid/test.txt in the same column layout (only the tag column changes) into a new folder.

    python -m bench.relabel_conll /tmp/nomisc --drop MISC
    python -m bench.relabel_conll /tmp/place-num --rename LOC=PLACE --numbers NUM
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "flaxner" / "resources" / "conll2003"
NUMBER = re.compile(r"^\d+([.,:/-]\d+)*$")  # 12, 1,000, 3.5, 1996-08-22, 6-3


def relabel(tags: list[str], tokens: list[str], drop: set[str], rename: dict[str, str], numbers: str) -> list[str]:
    """One sentence's IOB2 tags with types dropped / renamed, and runs of O-tagged numbers tagged `numbers`."""
    out = []
    for tok, tag in zip(tokens, tags):
        if tag != "O":
            kind = tag[2:]
            tag = "O" if kind in drop else f"{tag[:2]}{rename.get(kind, kind)}"
        elif numbers and NUMBER.match(tok):
            tag = f"I-{numbers}" if out and out[-1][2:] == numbers else f"B-{numbers}"
        out.append(tag)
    return out


def convert(src: Path, dst: Path, drop: set[str], rename: dict[str, str], numbers: str) -> Counter:
    """Rewrite one CoNLL file's last column; returns the count of B- tags per type written."""
    counts: Counter = Counter()
    with gzip.open(src, "rt", encoding="utf-8") as f:
        blocks = f.read().split("\n\n")
    out = []
    for block in blocks:
        rows = [line.split(" ") for line in block.splitlines() if line.strip()]
        if not rows or rows[0][0] == "-DOCSTART-":
            out.append(block.strip("\n"))
            continue
        tags = relabel([r[-1] for r in rows], [r[0] for r in rows], drop, rename, numbers)
        counts.update(t[2:] for t in tags if t.startswith("B-"))
        out.append("\n".join(" ".join([*r[:-1], t]) for r, t in zip(rows, tags)))
    dst.write_text("\n\n".join(b for b in out if b) + "\n", encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relabel_conll", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write train.txt, valid.txt, test.txt into (created; must be empty)")
    p.add_argument("--drop", action="append", default=[], metavar="TYPE", help="entity type whose tags become O")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename an entity type")
    p.add_argument("--numbers", default="", metavar="TYPE", help="tag O tokens that are numbers as this new type")
    args = p.parse_args(argv)
    rename = dict(r.split("=", 1) for r in args.rename)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        p.error(f"{out} is not empty")
    for split in ("train", "valid", "test"):
        counts = convert(SRC / f"{split}.txt.gz", out / f"{split}.txt", set(args.drop), rename, args.numbers)
        print(f"{out / split}.txt: entities {dict(sorted(counts.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
