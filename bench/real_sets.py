"""Bench data sets unlike flowers and glyphs: real photographs, and landscapes.

- `photos`: crops of the colour sample photographs that scikit-image ships
  in its wheel (no download): an astronaut, a cat, a cup of coffee, the
  Hubble deep field, a stained tissue slide, a motorcycle, a retina and a
  rocket. Each image is a square crop, 1/6 to 1/2 of the photograph's short
  side, at a random place, reduced to the bench's size with Pillow's area
  filter. Its label is the photograph it came from (8 classes, drawn evenly).
  Real camera noise, real textures, real colour statistics.
- `landscapes`: rendered scenes with an up and a down: a sky gradient over
  terrain, a sun or moon. Its label is the time of day (dawn, noon, dusk,
  night) times the terrain (mountains, hills, sea, desert): 16 classes.
  Horizontal structure, sky colours, nothing radial (flowers) and no strokes
  (glyphs).

Both are deterministic in `(seed, index)`: `set_images("photos", 1024, 32,
seed=3)` always gives the same images. The benches train on one seed and
hold out other seeds (`bench/set_scores.py`).
"""

import os

import numpy as np

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
          "motorcycle_left.png", "retina.jpg", "rocket.jpg")  # fmt: skip
TIMES = ("dawn", "noon", "dusk", "night")
TERRAINS = ("mountains", "hills", "sea", "desert")
SETS = ("photos", "landscapes")
# The images of a set (seed 0) that a bench teacher or raced recipe trains on.
TRAIN_IMAGES = 4096


def class_count(name):
    return len(PHOTOS) if name == "photos" else len(TIMES) * len(TERRAINS)


def set_images(name, count, size=32, seed=0):
    """`(images, labels)`: `(count, size, size, 3)` uint8 and `(count,)` int
    class indices of bench set `name` ("photos" or "landscapes")."""
    if name == "photos":
        return photo_crops(count, size, seed)
    if name == "landscapes":
        return landscapes(count, size, seed)
    raise ValueError(f"unknown bench set {name!r}; choose one of: {', '.join(SETS)}")


def _photographs():
    """The scikit-image sample photographs as RGB uint8 arrays, read from the
    installed wheel's data folder (never downloaded)."""
    from PIL import Image

    try:
        import skimage
    except ImportError as error:  # the `dev` extra installs it
        raise SystemExit("the photos bench set needs scikit-image: pip install -e .[dev]") from (
            error
        )
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    return [np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")) for name in PHOTOS]


def photo_crops(count, size=32, seed=0):
    from PIL import Image

    photographs = _photographs()
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    for index in range(count):
        rng = np.random.default_rng([seed, index, 11])
        label = int(rng.integers(len(photographs)))
        photo = photographs[label]
        height, width = photo.shape[:2]
        short = min(height, width)
        side = int(rng.uniform(short / 6, short / 2))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        images[index] = np.asarray(crop.resize((size, size), Image.BOX))
        labels[index] = label
    return images, labels


# Sky top, sky at the horizon, sun, and how bright the land is, per time of day.
SKIES = {
    "dawn": ((70, 80, 150), (250, 170, 120), (255, 220, 170), 0.7),
    "noon": ((40, 110, 220), (170, 210, 250), (255, 255, 230), 1.0),
    "dusk": ((60, 30, 90), (240, 100, 50), (255, 150, 60), 0.55),
    "night": ((5, 8, 25), (25, 35, 70), (230, 230, 210), 0.25),
}
# Near and far colour of each terrain in full light.
LANDS = {
    "mountains": ((90, 90, 100), (150, 160, 185)),
    "hills": ((50, 130, 45), (110, 170, 100)),
    "sea": ((20, 70, 140), (60, 120, 180)),
    "desert": ((215, 170, 100), (235, 205, 150)),
}


def _ridge(rng, xs, terrain, horizon):
    """The terrain's top edge (y, 0 at the top) at each x in [0, 1]."""
    if terrain == "sea":
        return np.full_like(xs, horizon)
    heights = {"mountains": 0.22, "hills": 0.08, "desert": 0.05}[terrain]
    edge = np.zeros_like(xs)
    for octave in range(1, 5):
        frequency = (1.0 if terrain != "mountains" else 1.3) * 2 ** (octave - 1)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * frequency * xs + phase)
        if terrain == "mountains":
            wave = 1.0 - 2.0 * np.abs(wave)  # sharp peaks
        edge += wave / octave**1.3
    edge = (edge - edge.min()) / max(np.ptp(edge), 1e-6)
    return horizon - heights * edge


def landscape(rng, time, terrain, size):
    scale = 2
    side = size * scale
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64) / (side - 1)
    top, low, sun = (np.array(c, np.float64) for c in SKIES[time][:3])
    light = SKIES[time][3]
    horizon = rng.uniform(0.45, 0.7)
    sky = top + (low - top) * np.clip(ys / horizon, 0, 1)[..., None] ** 1.5
    image = sky
    sun_x, sun_y = rng.uniform(0.15, 0.85), horizon * rng.uniform(0.25, 0.85)
    if time == "noon":
        sun_y = horizon * rng.uniform(0.1, 0.4)
    radius = rng.uniform(0.05, 0.09)
    distance = np.hypot(xs - sun_x, ys - sun_y)
    glow = np.clip(1.0 - (distance - radius) / (3 * radius), 0, 1) ** 2 * 0.35
    disc = np.clip((radius - distance) * side, 0, 1)
    if time == "night":
        stars = rng.uniform(size=(side, side)) > 0.985
        image = np.where((stars & (ys < horizon))[..., None], 200.0, image)
        glow = glow * 0.3
    image = image + (sun - image) * np.maximum(glow, disc)[..., None]
    near, far = (np.array(c, np.float64) * light for c in LANDS[terrain])
    layers = 2 if terrain in ("mountains", "hills") else 1
    for layer in range(layers):
        depth = (layer + 1) / layers
        line = _ridge(rng, xs[0], terrain, horizon + 0.08 * layer)
        colour = far + (near - far) * depth
        below = ys - line[None, :]
        shade = colour * (1.0 - 0.35 * np.clip(below / 0.4, 0, 1))[..., None]
        if terrain == "sea":
            # The sun's path on the water, and ripples.
            strength = 0.6 if time != "noon" else 0.3
            path = np.exp(-(((xs - sun_x) / (radius * 1.5)) ** 2)) * strength
            ripples = 0.5 + 0.5 * np.sin(ys * side * 1.7 + rng.uniform(0, 6))
            shade = shade + (sun - shade) * (path * ripples)[..., None]
        image = np.where((below > 0)[..., None], shade, image)
    image = image + rng.normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).reshape(size, scale, size, scale, 3).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)


def landscapes(count, size=32, seed=0):
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    for index in range(count):
        rng = np.random.default_rng([seed, index, 13])
        label = int(rng.integers(len(TIMES) * len(TERRAINS)))
        time, terrain = TIMES[label // len(TERRAINS)], TERRAINS[label % len(TERRAINS)]
        images[index] = landscape(rng, time, terrain, size)
        labels[index] = label
    return images, labels


def main():
    """Writes a PNG of each set's first images, a row per class."""
    import argparse

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--output", default="docs/results/bench_sets.png")
    args = parser.parse_args()
    figure, axes = plt.subplots(1, 2, figsize=(12, 7))
    for axis, name in zip(axes, SETS):
        images, labels = set_images(name, 600, args.size)
        rows = [images[labels == k][:8] for k in range(class_count(name))]
        grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows])
        axis.imshow(grid, interpolation="nearest")
        axis.set_title(f"{name}: a row per class")
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
