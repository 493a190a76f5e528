"""Fine-tune BERT for CoNLL-2003 NER (the seed recipe by default): `python scripts/train.py [--config FILE]
[--output-dir DIR] [--resume] [key=value ...]`. Same as `flaxner train`."""

import sys

from flaxner.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
