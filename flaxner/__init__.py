"""flaxner: fine-tune BERT for named-entity recognition in JAX/Flax and tag large corpora with it.

Importing flaxner changes nothing in the process. The `flaxner` command and scripts/train.py call
`flaxner.hostmem.tune()` first (CPU malloc settings for XLA's per-step scratch, see flaxner/hostmem.py); a library
user who trains on CPU can call it too, before JAX starts.
"""

__version__ = "0.1.0"
