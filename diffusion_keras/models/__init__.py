"""The models: `DiffusionModel` and its parts, the autoencoder, text encoder and
classifier, saving (layer 7).
"""
