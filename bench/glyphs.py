"""A second bench data set that is not mirror symmetric: rendered glyphs.

Each image is one letter or numeral whose mirror image is not itself (F, G,
J, K, L, N, P, Q, R, S, Z, 2 to 7), upright, in a random size, place and
colour on a plain background of another colour, drawn with Pillow's built-in
scalable font. A model trained with flips learns mirrored glyphs, which are
not in the data. Deterministic per index: `glyph_images(n, size)` always
gives the same images.
"""

import numpy as np

CHARACTERS = "FGJKLNPQRSZ234567"


def glyph_characters(count, seed=0):
    """The index in `CHARACTERS` of each of `glyph_images(count, seed=seed)`'s glyphs."""
    return np.array(
        [np.random.default_rng([seed, index]).integers(len(CHARACTERS)) for index in range(count)]
    )


def glyph_images(count, size=32, seed=0):
    """`(count, size, size, 3)` uint8 glyph images, drawn at 4x and reduced."""
    from PIL import Image, ImageDraw, ImageFont

    scale = 4
    canvas = size * scale
    fonts = {}
    images = np.empty((count, size, size, 3), np.uint8)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        character = CHARACTERS[rng.integers(len(CHARACTERS))]
        background = rng.integers(0, 256, 3)
        # A glyph colour far enough from the background to be seen.
        colour = (background + 96 + rng.integers(0, 64, 3)) % 256
        font_size = int(canvas * rng.uniform(0.45, 0.8))
        font = fonts.get(font_size) or fonts.setdefault(
            font_size, ImageFont.load_default(size=font_size)
        )
        image = Image.new("RGB", (canvas, canvas), tuple(int(c) for c in background))
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), character, font=font)
        width, height = right - left, bottom - top
        x = rng.uniform(0, max(canvas - width, 1)) - left
        y = rng.uniform(0, max(canvas - height, 1)) - top
        draw.text((x, y), character, font=font, fill=tuple(int(c) for c in colour))
        images[index] = np.asarray(image.resize((size, size), Image.BILINEAR))
    return images
