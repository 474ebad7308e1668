"""The training loop, evaluation, checkpoints and run logs: method-agnostic."""
