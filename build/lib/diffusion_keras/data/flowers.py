"""`builtin:flowers`: an offline data set of flower-like images drawn in numpy.

Every image is a function of its index alone (petal count, shape, colour, size,
rotation, position and background are drawn from `numpy.random.default_rng`
seeded with the index), so the data set is the same on every machine and needs
no download. It stands in for Oxford Flowers 102 where there is no network.
"""

import colorsys

import numpy as np

DEFAULT_COUNT = 2048
_SUPERSAMPLING = 2
# Classes by petal hue, for class-conditional training: (name, hue from, hue to).
COLOUR_CLASSES = (
    ("red", -0.08, 0.17),  # red, orange and yellow petals
    ("green", 0.17, 0.45),
    ("blue", 0.45, 0.70),
    ("purple", 0.70, 0.92),  # purple and pink
)
CLASS_NAMES = [name for name, _, _ in COLOUR_CLASSES]


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def flower_labels(count=DEFAULT_COUNT):
    """The colour class of each of the first `count` flowers (an index into
    `CLASS_NAMES`), from its petal hue."""
    labels = np.empty(count, dtype=np.int32)
    for index in range(count):
        hue = flower_parameters(index)[1]["petal_hue"]
        hue = hue - 1.0 if hue >= COLOUR_CLASSES[-1][2] else hue
        labels[index] = next(i for i, (_, lo, hi) in enumerate(COLOUR_CLASSES) if lo <= hue < hi)
    return labels


def flower_parameters(index):
    """The drawing parameters of flower `index` (what its caption describes),
    and its random generator after them (the grain is drawn from it last).

    Returns `(rng, parameters)`: `parameters` holds `top` and `bottom`
    (background RGB), `centre`, `flower_radius`, `petal_hue`, `layers` (a
    list, outermost first, of dicts with `petals`, `rotation`, `sharpness`,
    `inner`, `hue`, and `base` and `tip` RGB), `disc_radius` and `disc` (RGB), and the
    HSV draws the colours came from (`top_hsv`, `bottom_hsv`, `disc_hsv`).
    """
    rng = np.random.default_rng([20240801, index])
    top_hsv = (rng.uniform(0.15, 0.45), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6))
    bottom_hsv = (rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.45))
    centre = rng.uniform(-0.2, 0.2, size=2)
    flower_radius = rng.uniform(0.45, 0.9)
    petal_hue = rng.uniform(0.0, 1.0)
    layers = []
    for layer in range(2 if rng.uniform() < 0.4 else 1):
        petals = int(rng.integers(4, 13))
        rotation = rng.uniform(0.0, 2.0 * np.pi)
        sharpness = rng.uniform(0.4, 3.0)
        inner = rng.uniform(0.05, 0.45)
        hue = petal_hue + 0.06 * layer + rng.uniform(-0.03, 0.03)
        base = _hsv(hue, rng.uniform(0.45, 1.0), rng.uniform(0.6, 1.0))
        tip = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.2, 0.9), 1.0)
        layers.append(dict(petals=petals, rotation=rotation, sharpness=sharpness, inner=inner,
                           hue=hue, base=base, tip=tip))  # fmt: skip
    disc_radius = flower_radius * rng.uniform(0.1, 0.3)
    disc_hsv = (rng.uniform(0.05, 0.16), rng.uniform(0.6, 1.0), rng.uniform(0.25, 0.95))
    return rng, dict(
        top=_hsv(*top_hsv), bottom=_hsv(*bottom_hsv), centre=centre,
        flower_radius=flower_radius, petal_hue=petal_hue, layers=layers,
        disc_radius=disc_radius, disc=_hsv(*disc_hsv), top_hsv=top_hsv,
        bottom_hsv=bottom_hsv, disc_hsv=disc_hsv,
    )  # fmt: skip


def render_flower(index, image_size=64):
    """Draws flower number `index` as a float32 array in [0, 1]."""
    rng, drawn = flower_parameters(index)
    image, _ = _draw(drawn, image_size * _SUPERSAMPLING)
    # Average the supersampled pixels (anti-aliasing), then a little grain.
    image = image.reshape(image_size, _SUPERSAMPLING, image_size, _SUPERSAMPLING, 3)
    image = image.mean(axis=(1, 3))
    image = image + rng.normal(0.0, 0.015, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def petal_colour_seen(index, size=64):
    """The colour flower `index`'s petals show: the mean RGB of every petal
    pixel of its drawing (both rings, not the centre disc) on a `size` grid.

    It differs from the outer ring's drawn hue: the lighter tips cover most
    of a petal's area and are drawn up to 0.08 of hue away, and a second ring
    further on. Captions name this colour, so that the word is what the
    picture shows. (Petals always reach past the disc, which is at most 0.3 of
    the flower's radius: at least 191 of the 4,096 pixels of 64x64 drawings of
    flowers 0-4999 are petals.)"""
    _, drawn = flower_parameters(index)
    image, petals = _draw(drawn, size)
    return image[petals].mean(axis=0)


def _draw(drawn, size):
    """The drawing of parameters `drawn` on a `size` x `size` grid, without
    anti-aliasing or grain, and the mask of its petal pixels."""
    top, bottom, flower_radius = drawn["top"], drawn["bottom"], drawn["flower_radius"]
    centre_x, centre_y = drawn["centre"]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")

    # Background: a vertical gradient between two leafy or earthy colours.
    mix = ((y + 1.0) / 2.0)[..., None]
    image = top * (1.0 - mix) + bottom * mix

    dx, dy = x - centre_x, y - centre_y
    radius = np.sqrt(dx**2 + dy**2)
    angle = np.arctan2(dy, dx)
    petals = np.zeros(radius.shape, dtype=bool)
    for layer, petal in enumerate(drawn["layers"]):
        layer_radius = flower_radius * (1.0 - 0.35 * layer)
        profile = np.abs(np.cos(petal["petals"] * (angle - petal["rotation"]) / 2.0))
        profile = profile ** petal["sharpness"]
        petal_radius = layer_radius * (petal["inner"] + (1.0 - petal["inner"]) * profile)
        inside = radius < petal_radius
        petals |= inside
        base, tip = petal["base"], petal["tip"]
        # Shade along the petal: darker near the centre, lighter at the tips.
        along = np.clip(radius / np.maximum(petal_radius, 1e-6), 0.0, 1.0)[..., None]
        shade = base * (0.55 + 0.45 * along) * (1.0 - along) + tip * along
        image = np.where(inside[..., None], shade, image)

    disc_radius, disc = drawn["disc_radius"], drawn["disc"]
    dots = 0.85 + 0.15 * np.sin(40.0 * dx) * np.sin(40.0 * dy)
    in_disc = radius < disc_radius
    image = np.where(in_disc[..., None], disc * dots[..., None], image)
    return image, petals & ~in_disc


def flower_images(count=DEFAULT_COUNT, image_size=64):
    """Returns `count` flowers as a uint8 array `(count, size, size, 3)`."""
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    for index in range(count):
        images[index] = np.round(render_flower(index, image_size) * 255.0)
    return images
