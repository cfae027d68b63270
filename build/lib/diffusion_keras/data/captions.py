"""Captions: for `builtin:flowers` from their drawing parameters, and for image folders.

Each generated flower is described by what it was drawn with (petal colour,
count and shape, size, centre and background), in one of several phrasings,
all functions of its index alone. The colour word names the colour the petals
show (`flowers.petal_colour_seen`), not the hue the outer ring was drawn from:
the two name different colours for a fifth of the flowers. Image folders carry
captions in the two conventions users already have: a `metadata.jsonl` with
`file_name` and `text` per line (Hugging Face's imagefolder layout), or a
sidecar `NAME.txt` beside each `NAME.jpg`. An image with no caption trains as
the empty prompt, which is also what classifier-free guidance's unconditional
half sees.
"""

import colorsys
import json
import os
import warnings

from diffusion_keras.data.flowers import flower_parameters, petal_colour_seen
from diffusion_keras.utils.errors import DataError

METADATA_FILE = "metadata.jsonl"
# Petal colours by the hue of the colour the petals show (`petal_colour_seen`):
# (name, hue from, hue to).
PETAL_COLOURS = (
    ("red", -0.05, 0.04),
    ("orange", 0.04, 0.11),
    ("yellow", 0.11, 0.18),
    ("green", 0.18, 0.45),
    ("blue", 0.45, 0.70),
    ("purple", 0.70, 0.85),
    ("pink", 0.85, 0.95),
)
COLOUR_NAMES = [name for name, _, _ in PETAL_COLOURS]
PETAL_COUNTS = list(range(4, 13))
NUMBER_WORDS = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten",
                11: "eleven", 12: "twelve"}  # fmt: skip
PHRASINGS = (
    "a {size} {colour} flower with {count} {shape} petals, a {centre} centre and a {ground} "
    "background",
    "{count} {shape} {colour} petals around a {centre} centre",
    "a photo of a {colour} flower with {count} petals",
    "{colour} flower, {count} {shape} petals, {size}, {rings}",
)


def petal_colour(hue):
    """The name of a petal hue in [0, 1) (`PETAL_COLOURS`)."""
    hue = hue - 1.0 if hue >= PETAL_COLOURS[-1][2] else hue
    return next(name for name, lo, hi in PETAL_COLOURS if lo <= hue < hi)


def flower_attributes(index):
    """What flower `index` looks like, in words: `colour`, `count` (an int),
    `shape`, `size`, `centre`, `ground` and `rings`."""
    _, drawn = flower_parameters(index)
    outer = drawn["layers"][0]
    sharpness = outer["sharpness"]
    radius = drawn["flower_radius"]
    _, _, disc_value = drawn["disc_hsv"]
    background = (drawn["top_hsv"][2] + drawn["bottom_hsv"][2]) / 2.0
    return dict(
        colour=petal_colour(colorsys.rgb_to_hsv(*petal_colour_seen(index))[0]),
        count=outer["petals"],
        shape="round" if sharpness < 1.0 else "oval" if sharpness < 2.0 else "pointed",
        size="small" if radius < 0.6 else "medium" if radius < 0.75 else "large",
        centre="dark" if disc_value < 0.5 else "bright",
        ground="dark" if background < 0.3 else "light",
        rings="two rings of petals" if len(drawn["layers"]) == 2 else "one ring of petals",
    )


def flower_captions(index):
    """Every phrasing of flower `index`'s caption."""
    words = flower_attributes(index)
    words["count"] = NUMBER_WORDS[words["count"]]
    return [phrasing.format(**words) for phrasing in PHRASINGS]


def flower_caption(index):
    """The caption flower `index` trains with: one of its phrasings, chosen by
    its index, so every phrasing is in the data set."""
    return flower_captions(index)[index % len(PHRASINGS)]


def folder_captions(folder, image_paths):
    """The caption of each of `image_paths` (below `folder`), in order.

    From `FOLDER/metadata.jsonl` when it exists (one JSON object per line
    with `file_name`, relative to the folder, and `text`), else from a
    sidecar `NAME.txt` beside each image. Rows that cannot be read (bad JSON,
    a missing key, a file that is not among the images) and images without
    a caption are counted and warned about once each; those images get the
    empty caption.
    """
    metadata = os.path.join(folder, METADATA_FILE)
    if os.path.exists(metadata):
        found, bad = _metadata_captions(folder, metadata, image_paths)
        if bad:
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            warnings.warn(f"{METADATA_FILE}: skipped {len(bad)} bad rows: {shown}", stacklevel=2)
    else:
        found = {}
        for path in image_paths:
            sidecar = os.path.splitext(path)[0] + ".txt"
            if os.path.exists(sidecar):
                with open(sidecar, encoding="utf-8", errors="replace") as handle:
                    found[path] = handle.read()
    captions = [" ".join(found.get(path, "").split()) for path in image_paths]
    missing = sum(1 for caption in captions if not caption)
    if missing:
        warnings.warn(
            f"{missing} of {len(image_paths)} images in {folder!r} have no caption; "
            "they train as the empty prompt",
            stacklevel=2,
        )
    return captions


def _metadata_captions(folder, metadata, image_paths):
    known = {os.path.normpath(os.path.relpath(path, folder)): path for path in image_paths}
    found, bad = {}, []
    try:
        handle = open(metadata, encoding="utf-8", errors="replace")
    except OSError as error:
        raise DataError(f"cannot read {metadata!r}: {error.strerror or error}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
                if not isinstance(name, str) or not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                bad.append(f"line {number}")
                continue
            path = known.get(os.path.normpath(name))
            if path is None:
                bad.append(f"line {number} ({name}: no such image)")
                continue
            found[path] = text
    return found, bad


def is_caption_file(path, image_stems):
    """Whether `path` holds captions (`metadata.jsonl`, or a `.txt` beside an
    image of the same name), not an image and not junk."""
    if os.path.basename(path) == METADATA_FILE:
        return True
    stem, extension = os.path.splitext(path)
    return extension.lower() == ".txt" and stem in image_stems
