"""Training runs: `train` and its stages, callbacks, checkpoints, preemption,
distribution (layer 9).
"""
