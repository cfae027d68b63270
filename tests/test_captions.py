"""Captions: made for builtin:flowers, read from image folders in both layouts."""

import colorsys
import json
import os
import warnings

import numpy as np
import pytest

from conftest import write_png_folder
from diffusion_keras.data import flowers
from diffusion_keras.data.captions import (
    COLOUR_NAMES,
    NUMBER_WORDS,
    PHRASINGS,
    flower_attributes,
    flower_caption,
    flower_captions,
    folder_captions,
    petal_colour,
)
from diffusion_keras.data.datasets import load_folder, load_images, split_held_out
from diffusion_keras.data.flowers import flower_parameters, render_flower
from diffusion_keras.utils.errors import DataError


def test_a_flowers_caption_says_what_it_was_drawn_with():
    for index in range(40):
        _, drawn = flower_parameters(index)
        words = flower_attributes(index)
        assert words["count"] == drawn["layers"][0]["petals"]
        assert words["colour"] in COLOUR_NAMES
        captions = flower_captions(index)
        assert len(captions) == len(PHRASINGS) and len(set(captions)) == len(PHRASINGS)
        for caption in captions:
            assert words["colour"] in caption and NUMBER_WORDS[words["count"]] in caption
        assert flower_caption(index) == captions[index % len(PHRASINGS)]


def test_a_flowers_colour_word_names_the_colour_its_petals_show():
    # The mean colour of the pixels wholly inside the petals of the 32x32
    # image a model trains on names the caption's colour: the word is what
    # the picture shows. The outer ring's drawn hue would not (its lighter
    # tips, most of each petal, are drawn up to 0.08 of hue away).
    seen = drawn_hue = 0
    for index in range(150):
        image = render_flower(index, 32)
        _, drawn = flower_parameters(index)
        _, petals = flowers._draw(drawn, 64)
        petals = petals.reshape(32, 2, 32, 2).all(axis=(1, 3))
        if not petals.any():
            continue
        shown = petal_colour(colorsys.rgb_to_hsv(*image[petals].mean(axis=0))[0])
        seen += shown == flower_attributes(index)["colour"]
        drawn_hue += shown == petal_colour(drawn["layers"][0]["hue"] % 1.0)
    assert seen >= 0.97 * 150
    assert drawn_hue < 0.9 * 150


def test_builtin_flowers_come_with_captions_only_when_asked():
    plain = load_images("builtin:flowers:8", 16)
    captioned = load_images("builtin:flowers:8", 16, with_captions=True)
    assert plain.captions is None
    assert captioned.captions == [flower_caption(i) for i in range(8)]
    np.testing.assert_array_equal(plain.images, captioned.images)
    train, held = split_held_out(captioned, 3)
    assert sorted(train.captions + held.captions) == sorted(captioned.captions)


def test_metadata_jsonl_gives_captions_and_bad_rows_are_counted(tmp_path):
    folder = str(tmp_path / "images")
    paths = write_png_folder(folder, count=6, nested=False)
    names = [os.path.basename(p) for p in paths]
    rows = [
        json.dumps({"file_name": names[0], "text": "a red flower"}),
        json.dumps({"file_name": names[1], "text": "  two   words \n"}),
        "{not json",
        json.dumps({"file_name": names[2]}),
        json.dumps({"file_name": "missing.png", "text": "nothing"}),
        json.dumps({"file_name": names[3], "text": ""}),
    ]
    with open(os.path.join(folder, "metadata.jsonl"), "w") as handle:
        handle.write("\n".join(rows) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_folder(folder, 16, with_captions=True, cache=False)
    assert data.captions == ["a red flower", "two words", "", "", "", ""]
    messages = [str(w.message) for w in caught]
    assert any("skipped 3 bad rows" in m and "line 3" in m for m in messages), messages
    assert any("4 of 6 images" in m and "empty prompt" in m for m in messages), messages
    assert not any("not images" in m for m in messages), messages


def test_sidecar_txt_files_give_captions(tmp_path):
    folder = str(tmp_path / "images")
    paths = write_png_folder(folder, count=4, nested=True)
    with open(os.path.splitext(paths[0])[0] + ".txt", "w") as handle:
        handle.write("blue petals\n")
    with open(os.path.splitext(paths[2])[0] + ".txt", "w") as handle:
        handle.write("   ")
    with pytest.warns(UserWarning, match="3 of 4 images"):
        captions = folder_captions(folder, paths)
    assert captions == ["blue petals", "", "", ""]


def test_asking_a_tfds_set_for_captions_is_a_clear_error():
    with pytest.raises(DataError, match="no captions"):
        load_images("tfds:oxford_flowers102", 16, with_captions=True)
