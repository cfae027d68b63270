"""Editing with a trained model: image-to-image, inpainting, denoising, and their input
files (layer 6).
"""
