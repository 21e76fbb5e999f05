"""Everything that knows TRL's GRPOTrainer: the GRPOConfig translation, the trainer's assembly,
the rollout adapter for our engines, the step timer, the guards, the completions log, the cold
start and the worst-case preflight. `trl_private.py` holds every use of TRL's private parts."""
