"""The diffusion process: schedules, training-time sampling and loss weighting,
prediction targets (layer 2).
"""
