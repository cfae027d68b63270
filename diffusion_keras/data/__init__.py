"""Images in: folders, tensorflow-datasets, the built-in flowers and captions, the
image cache (layer 4).
"""
