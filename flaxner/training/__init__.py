"""The training loop everyone drives: set-up, step, evaluation, checkpoints, distributed, export."""
