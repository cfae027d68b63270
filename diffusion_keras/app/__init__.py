"""A local web page to generate, edit and prompt with a trained model.

    python -m diffusion_keras.app MODEL
"""
