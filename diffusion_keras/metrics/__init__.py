"""Quality metrics: KID, FID and IS, and their feature extractors (layer 8)."""
