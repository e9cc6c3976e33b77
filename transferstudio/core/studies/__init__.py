"""Experiments over experiments: hyperparameter sweeps and transfer-gain baselines."""
