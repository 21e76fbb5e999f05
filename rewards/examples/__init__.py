"""Worked examples of custom rewards; see rewards/README.md."""
