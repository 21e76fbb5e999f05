"""A run's folder over its life: the folder itself, its checkpoints, resuming, Ctrl-C, the
metrics and W&B tracking, and the curves drawn from them."""
