"""Reading what `generate.py` edits: images and black-and-white masks, as files."""

import os

import numpy as np

from diffusion_keras.data.datasets import (
    ImageFileError,
    list_image_files,
    read_image,
    resize_array,
    to_rgb_array,
)


def image_paths_of(path):
    """The image files `path` names: itself, or every image below a folder."""

    if os.path.isdir(path):
        paths, _ = list_image_files(path)
        if not paths:
            raise ValueError(f"no images (jpg, png, webp, bmp, gif, tiff, ...) in {path}")
        return paths
    if not os.path.exists(path):
        raise ValueError(f"no such file or folder: {path}")
    return [path]


def load_edit_images(paths, image_size, center_crop=False):
    """Decodes images to edit as training images are decoded
    (`data.decode_image_file`): grayscale becomes RGB, transparency is
    composited over white, then the optional centre crop and the resize.
    Returns `(images in [0, 1], original (width, height) of each)`."""
    images, sizes = [], []
    for path in paths:
        try:
            size, array = read_image(path, lambda image: (image.size, to_rgb_array(image)))
            images.append(resize_array(array, image_size, center_crop))
            sizes.append(size)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
    return np.stack(images).astype(np.float32) / 255.0, sizes


def load_mask_file(path, size, image_size, center_crop=False):
    """A black-and-white mask file as 0 (keep, black) / 1 (regenerate,
    white), `(image_size, image_size)`, cropped and resized like the image
    of `size` (width, height) it belongs to (nearest neighbour)."""
    from PIL import Image

    try:
        # The same checks as an image: size, format, damage.
        found, grey = read_image(path, lambda image: (image.size, np.asarray(image.convert("L"))))
    except (ImageFileError, OSError) as error:
        raise ValueError(f"cannot read mask {path}: {error}") from None
    if found != tuple(size):
        raise ValueError(
            f"mask {path} is {found[0]}x{found[1]} but its image is "
            f"{size[0]}x{size[1]}; draw the mask on the image itself"
        )
    levels = np.unique(grey)
    if not np.isin(levels, (0, 255)).all():
        raise ValueError(
            f"mask {path} is not black and white: it has {len(levels)} grey levels; "
            "use black (0) to keep and white (255) to regenerate, with no anti-aliasing"
        )
    if center_crop:
        height, width = grey.shape
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        grey = grey[top : top + side, left : left + side]
    resized = Image.fromarray(grey).resize((image_size, image_size), Image.NEAREST)
    return (np.asarray(resized) > 127).astype(np.float32)


def load_masks(mask_path, image_paths, sizes, image_size, center_crop=False):
    """Masks `(n, image_size, image_size)` for `image_paths`: one file for all
    of them, or a folder with a mask of the same name (any image extension)
    for each."""
    if not os.path.isdir(mask_path):
        if not os.path.exists(mask_path):
            raise ValueError(f"no such mask file or folder: {mask_path}")
        return np.stack(
            [load_mask_file(mask_path, size, image_size, center_crop) for size in sizes]
        )
    by_name = {os.path.splitext(os.path.basename(p))[0]: p for p in image_paths_of(mask_path)}
    masks = []
    for path, size in zip(image_paths, sizes):
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in by_name:
            raise ValueError(f"no mask for {path} in {mask_path} (expected {name}.png)")
        masks.append(load_mask_file(by_name[name], size, image_size, center_crop))
    return np.stack(masks)
