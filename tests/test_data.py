import os
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from diffusion_keras.data.datasets import (
    DataError,
    ImageData,
    epoch_batches,
    list_image_files,
    load_images,
    load_tfds,
    random_crops,
    train_dataset,
)
from diffusion_keras.data.flowers import flower_images


def test_nested_folders_and_mixed_formats(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    rgb = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(rgb(20, 30)).save(tmp_path / "top.png")
    Image.fromarray(rgb(40, 40)).save(tmp_path / "a" / "one.JPG")
    Image.fromarray(rgb(10, 12)).save(tmp_path / "a" / "b" / "two.bmp")
    Image.fromarray(rgb(33, 17)).convert("P").save(tmp_path / "a" / "b" / "c" / "three.gif")
    Image.fromarray(rgb(8, 8)).save(tmp_path / ".hidden" / "ignored.png")
    Image.fromarray(rgb(8, 8)).save(tmp_path / "a" / ".ignored.png")
    (tmp_path / "notes.txt").write_text("not an image")
    paths, others = list_image_files(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["three.gif", "two.bmp", "one.JPG", "top.png"]
    assert [os.path.basename(p) for p in others] == ["notes.txt"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_images(str(tmp_path), image_size=16)
    assert data.images.shape == (4, 16, 16, 3) and data.images.dtype == np.uint8
    assert any("1 files that are not images" in str(w.message) for w in caught)


def test_resizing_keeps_the_picture(tmp_path):
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)
    image[:, 32:] = (0, 0, 255)
    Image.fromarray(image).save(tmp_path / "halves.png")
    data = load_images(str(tmp_path), image_size=8)
    assert tuple(data.images[0, 4, 0]) == (255, 0, 0)
    assert tuple(data.images[0, 4, 7]) == (0, 0, 255)
    cropped = load_images(str(tmp_path), image_size=8, center_crop=True)
    assert tuple(cropped.images[0, 4, 0]) == (255, 0, 0) and tuple(cropped.images[0, 4, 7]) == (
        0,
        0,
        255,
    )


def test_labels_from_subfolders(png_folder):
    data = load_images(png_folder, image_size=16, with_labels=True)
    assert data.class_names == ["class_0", "class_1"]
    assert sorted(set(data.labels.tolist())) == [0, 1] and len(data.labels) == len(data)


def test_builtin_flowers_are_deterministic_and_varied():
    a = flower_images(6, 32)
    b = load_images("builtin:flowers:6", image_size=32).images
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 32, 32, 3)
    # Each flower differs from the others; images are not flat.
    assert len({img.tobytes() for img in a}) == 6
    assert all(img.std() > 10 for img in a)
    # The first images do not depend on how many are made.
    np.testing.assert_array_equal(flower_images(3, 32), a[:3])


@pytest.mark.parametrize(
    "source, message",
    [
        ("builtin:tulips", "unknown built-in data set 'tulips'"),
        ("builtin:flowers:x", "needs a whole number"),
        ("/does/not/exist", "does not exist"),
    ],
)
def test_bad_sources_are_refused(source, message):
    with pytest.raises(DataError, match=message):
        load_images(source, image_size=16)


def test_epochs_are_a_function_of_seed_and_epoch():
    data = ImageData(flower_images(10, 8))
    first = list(epoch_batches(data, 4, 2, seed=3, epoch=1))
    assert len(first) == 5  # 20 images in 2 repetitions, last partial batch dropped
    again = list(epoch_batches(data, 4, 2, seed=3, epoch=1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = list(epoch_batches(data, 4, 2, seed=3, epoch=2))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_resumed_dataset_continues_where_the_full_one_was():
    data = ImageData(flower_images(12, 8))
    full = [b.numpy() for b in train_dataset(data, 4, 1, seed=5, epochs=3)]
    resumed = [b.numpy() for b in train_dataset(data, 4, 1, seed=5, first_epoch=1, epochs=3)]
    assert len(full) == 9 and len(resumed) == 6
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a, b)
    assert full[0].dtype == np.float32 and 0.0 <= full[0].min() and full[0].max() <= 1.0


def test_random_crops_are_seeded_windows_of_each_image():
    data = ImageData(flower_images(8, 16))
    whole = [b.numpy() for b in train_dataset(data, 4, 1, seed=1, epochs=1)]

    def crops(seed):
        batches = train_dataset(data, 4, 1, seed=1, epochs=1)
        return [b.numpy() for b in random_crops(batches, 8, seed)]

    first, again, other = crops(2), crops(2), crops(3)
    assert [c.shape for c in first] == [(4, 8, 8, 3)] * 2
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    places = set()
    for images, cut in zip(whole, first):
        for image, window in zip(images, cut):
            found = [
                (y, x) for y in range(9) for x in range(9)
                if np.array_equal(image[y : y + 8, x : x + 8], window)
            ]  # fmt: skip
            assert found, "a crop is not a window of its image"
            places.add(found[0])
    assert len(places) > 1  # each image its own place, not one per batch


def test_fewer_images_than_a_batch_is_refused():
    with pytest.raises(DataError, match="fewer than one batch of 64"):
        train_dataset(ImageData(flower_images(10, 8)), 64, 1)


def make_tfds_builder(data_dir):
    """A small tensorflow-datasets builder whose data is made here, offline."""
    import tensorflow_datasets as tfds

    class TinyFlowers(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=["red", "blue"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 6), "test": self._generate_examples(6, 4)}

        def _generate_examples(self, start, count):
            for i in range(start, start + count):
                image = np.zeros((24, 20, 3), np.uint8)
                image[..., 0 if i % 2 == 0 else 2] = 200
                yield i, {"image": image, "label": i % 2}

    return TinyFlowers


def test_tfds_source_reads_every_split_offline(tmp_path):
    make_tfds_builder(str(tmp_path))
    data = load_tfds("tiny_flowers", image_size=16, data_dir=str(tmp_path))
    assert data.images.shape == (10, 16, 16, 3)
    assert data.class_names == ["red", "blue"]
    assert sorted(data.labels.tolist()) == [0] * 5 + [1] * 5
    # Labels follow their images: red images are label 0.
    reds = data.images[data.labels == 0][..., 0]
    assert reds.min() == 200
    data = load_images("tfds:tiny_flowers", image_size=8, data_dir=str(tmp_path))
    assert data.images.shape == (10, 8, 8, 3)


def test_tfds_oxford_flowers_fails_fast_without_network(tmp_path, monkeypatch):
    from diffusion_keras.utils import network

    monkeypatch.setattr(network, "hosts_reachable", lambda urls, timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(DataError, match="oxford_flowers102.*cannot be reached"):
        load_images("tfds:oxford_flowers102", image_size=16, data_dir=str(tmp_path))
    assert time.monotonic() - start < 60


def test_unknown_tfds_name_is_refused(tmp_path):
    with pytest.raises(DataError, match="unknown tensorflow-datasets data set 'no_such_set'"):
        load_images("tfds:no_such_set", image_size=16, data_dir=str(tmp_path))


def test_builtin_flowers_have_colour_classes():
    from diffusion_keras.data.flowers import CLASS_NAMES

    data = load_images("builtin:flowers:400", image_size=16, with_labels=True)
    assert data.class_names == CLASS_NAMES == ["red", "green", "blue", "purple"]
    assert sorted(set(data.labels.tolist())) == [0, 1, 2, 3]
    # The class is the petal colour: red flowers are redder than blue ones.
    means = [data.images[data.labels == k].astype(float).mean(axis=(0, 1, 2)) for k in range(4)]
    red, blue = means[0], means[2]
    assert red[0] - red[2] > blue[0] - blue[2] + 20
    # Unlabelled loading is unchanged.
    assert load_images("builtin:flowers:400", image_size=16).labels is None
