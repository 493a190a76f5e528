"""flaxner: fine-tune BERT for named-entity recognition in JAX/Flax and tag large corpora with it."""

from flaxner import hostmem as _hostmem

__version__ = "0.1.0"

# Before anything starts JAX's CPU client: keep XLA's per-step scratch memory mapped (see flaxner/hostmem.py).
_hostmem.tune()
