"""Shared helpers: errors, precision, pixel ranges, image files, the CPU runtime (layer 1)."""
