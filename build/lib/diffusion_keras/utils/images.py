"""Writing images: PNG grids and one PNG per image."""

import os

import numpy as np


def to_uint8(images):
    """Float images in [0, 1] to uint8, rounding to nearest."""
    return np.round(np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0).astype(
        np.uint8
    )


def image_grid(images, columns=None, padding=2):
    """Lays images `(n, h, w, c)` out in rows of `columns`, on white padding.

    Returns a uint8 array `(rows * (h + padding) + padding, ...)`.
    """
    images = to_uint8(images)
    count, height, width, channels = images.shape
    columns = min(columns or count, count)
    rows = -(-count // columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        255,
        dtype=np.uint8,
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def _write_png(array, path):
    # Written to a temporary name and renamed, so a reader never sees half a file.
    from PIL import Image

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    if array.shape[-1] == 1:
        array = array[..., 0]
    Image.fromarray(array).save(temporary, format="PNG")
    os.replace(temporary, path)


def save_grid(images, path, columns=None, padding=2):
    """Writes images in [0, 1] as one PNG grid at `path`."""
    _write_png(image_grid(images, columns, padding), path)
    return path


def save_images(images, directory, prefix="image"):
    """Writes each image in [0, 1] as `directory/prefix_NNNN.png`."""
    paths = []
    for index, image in enumerate(to_uint8(images)):
        path = os.path.join(directory, f"{prefix}_{index:04d}.png")
        _write_png(image, path)
        paths.append(path)
    return paths


def spherical_interpolation(a, b, fractions):
    """The book's interpolation between noises `a` and `b`: for each fraction t,
    `sin(t pi / 2) a + cos(t pi / 2) b`, which keeps unit variance."""
    fractions = np.asarray(fractions, dtype=np.float32).reshape(-1, *([1] * np.ndim(a)))
    return np.sin(fractions * np.pi / 2) * a + np.cos(fractions * np.pi / 2) * b
