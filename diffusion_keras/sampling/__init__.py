"""The reverse process for any denoiser: update rules, steps, noise streams, guidance,
the loop (layer 5).
"""
