"""Evaluation of trained runs: restoring a run directory, held-out loss (packed or streamed), the `eval` CLI."""
