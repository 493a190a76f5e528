"""flaxner: fine-tune BERT for named-entity recognition in JAX/Flax and tag large corpora with it."""

__version__ = "0.1.0"
