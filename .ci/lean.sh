#!/usr/bin/env bash
# The core install alone (what `pip install flaxner` gives: no extras) in a fresh venv, at constraints.txt's versions.
# Fails when it holds torch, sentence-transformers, scikit-learn or seqeval, or when `flaxner train` / `flaxner tag`
# import torch or scikit-learn; prints the install's size and package count (docs/install.md records them).
# Usage: .ci/lean.sh [VENV]   (default .venv-lean; about 2 minutes on 2 cores with pip's cache warm)
set -euo pipefail
cd "$(dirname "$0")/.."
V=$(realpath -m "${1:-.venv-lean}")
rm -rf "$V"
python3 -m venv "$V"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# a copy of the tree (tracked and new files), so pip's in-tree build leaves no build/ or egg-info here
mkdir "$tmp/src" && git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$tmp/src"
start=$SECONDS
"$V/bin/pip" install -q -c constraints.txt "$tmp/src"
echo "lean: installed in $((SECONDS - start)) s; site-packages $(du -sh "$V"/lib/python3.*/site-packages | cut -f1)," \
     "$("$V/bin/pip" list --format=freeze | wc -l) packages"
bad=$("$V/bin/pip" list --format=freeze | grep -iE '^(torch|sentence-transformers|scikit-learn|seqeval|nvidia-)' || true)
[ -z "$bad" ] || { echo "lean: the core install holds: $bad"; exit 1; }
# Start-up and a whole run in the lean venv, with Python's import log: neither may import torch or scikit-learn.
(cd "$tmp" && PYTHONPROFILEIMPORTTIME=1 "$V/bin/flaxner" train --config tiny --output-dir run \
    "model.name=$OLDPWD/tests/fixtures/tiny-bert" "data.limit=16" "train.epochs=1" > train.log 2> train.err) \
    || { tail -5 "$tmp/train.err"; exit 1; }
PYTHONPROFILEIMPORTTIME=1 "$V/bin/flaxner" tag docs/sample.jsonl --model tests/fixtures/old-run-tiny \
    -o "$tmp/tagged.jsonl" --no-progress 2> "$tmp/tag.err" || { tail -5 "$tmp/tag.err"; exit 1; }
if grep -hE '\| +(torch|sklearn|sentence_transformers)$' "$tmp/train.err" "$tmp/tag.err"; then
  echo "lean: flaxner train/tag imported the modules above"; exit 1
fi
echo "lean: flaxner train and tag ran without torch, scikit-learn or seqeval ($(wc -l < "$tmp/tagged.jsonl") lines tagged)"
