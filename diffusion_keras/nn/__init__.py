"""Network building blocks: layers, attention and the book's U-Net (layer 3)."""
