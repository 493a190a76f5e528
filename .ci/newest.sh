#!/usr/bin/env bash
# Makes .venv-newest with flaxner's dependencies (the [test] extra included) at the newest releases
# pyproject.toml's ranges admit, resolved fresh from PyPI (no constraints.txt), on Python 3.12 (jax 0.11 and later
# need it), without torch (the core and the test extra install none: docs/install.md); prints what it chose. uv (a pinned release, in .venv-tools)
# resolves and installs. flaxner itself is installed afterwards (.ci/run: `uv pip install --no-deps -e .`), so that
# this can run beside step 1's editable install of the same folder.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {  # python3.12 on PATH, else pyenv's, else this machine's python3 (then jax stays at 0.10)
  local p
  if p=$(command -v python3.12) && "$p" -c pass 2>/dev/null; then echo "$p"; return; fi
  for p in "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12; do
    if [ -x "$p" ]; then echo "$p"; return; fi
  done
  command -v python3
}
PY=$(find_python)
python3 -m venv .venv-tools
.venv-tools/bin/pip install -q 'uv==0.13.9'
.venv-tools/bin/uv venv -q --python "$PY" .venv-newest
.venv-tools/bin/uv pip install -q --python .venv-newest/bin/python -r pyproject.toml --extra test
.venv-newest/bin/python - <<'PY'
import sys
from importlib.metadata import version
names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers", "huggingface-hub",
         "tokenizers", "datasets", "safetensors"]
print(f"newest: Python {sys.version.split()[0]}; " + ", ".join(f"{n} {version(n)}" for n in names))
PY
