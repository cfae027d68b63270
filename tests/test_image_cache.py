"""Image folders are decoded once; later loads map the decoded images from disk."""

import os
import warnings

import numpy as np
import pytest

import diffusion_keras.data.datasets as data_module
from conftest import write_png_folder
from diffusion_keras.data.datasets import ImageData, image_dataset, load_folder, load_images


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_KERAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_module, "decode_image_file", refuse)


def test_a_second_load_maps_the_first_ones_decoding(tmp_path, cache, monkeypatch):
    folder = tmp_path / "images"
    write_png_folder(folder, 12)
    first = load_images(str(folder), 16, with_labels=True)
    in_memory = data_module.load_folder(str(folder), 16, with_labels=True, cache=False)
    np.testing.assert_array_equal(first.images, in_memory.images)
    np.testing.assert_array_equal(first.labels, in_memory.labels)
    no_decoding(monkeypatch)
    second = load_images(str(folder), 16, with_labels=True)
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    np.testing.assert_array_equal(second.images, in_memory.images)
    assert second.class_names == in_memory.class_names
    assert len(os.listdir(cache / "images")) == 1


def test_another_size_crop_or_changed_file_is_decoded_anew(tmp_path, cache):
    folder = tmp_path / "images"
    paths = write_png_folder(folder, 6, nested=False)
    load_images(str(folder), 16)
    load_images(str(folder), 8)
    load_images(str(folder), 16, center_crop=True)
    assert len(os.listdir(cache / "images")) == 3
    os.utime(paths[0], ns=(0, 10**18))  # touched: its modification time changed
    load_images(str(folder), 16)
    assert len(os.listdir(cache / "images")) == 4


def test_unreadable_files_are_warned_about_on_every_load(tmp_path, cache):
    folder = tmp_path / "images"
    write_png_folder(folder, 5, nested=False)
    (folder / "broken.png").write_bytes(b"not an image")
    for _ in range(2):
        with pytest.warns(UserWarning, match="skipped 1 unreadable image files"):
            assert len(load_images(str(folder), 16)) == 5


def test_an_unwritable_cache_decodes_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_KERAS_CACHE", "/proc/no_such_place")
    folder = tmp_path / "images"
    write_png_folder(folder, 4, nested=False)
    with pytest.warns(UserWarning, match="image cache not written"):
        data = load_images(str(folder), 16)
    assert len(data) == 4 and not isinstance(data.images, np.memmap)


def test_a_damaged_entry_is_decoded_again(tmp_path, cache):
    folder = tmp_path / "images"
    write_png_folder(folder, 4, nested=False)
    expected = load_images(str(folder), 16).images.copy()
    (entry,) = os.listdir(cache / "images")
    (cache / "images" / entry / "images.npy").write_bytes(b"truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_images(str(folder), 16).images, expected)


def test_image_dataset_streams_every_image_in_order(tmp_path, cache):
    folder = tmp_path / "images"
    write_png_folder(folder, 10, nested=False)
    load_images(str(folder), 16)
    data = load_images(str(folder), 16)  # memory-mapped
    batches = list(image_dataset(data, 4).as_numpy_iterator())
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), data.images / np.float32(255.0))


def rss_file_kb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("RssFile"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_reading_a_mapped_file_does_not_keep_it_resident(tmp_path):
    path = str(tmp_path / "big.npy")
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(64, 512, 512, 3))
    array[:] = 7
    del array
    mapped = np.load(path, mmap_mode="r")
    before = rss_file_kb()
    assert int(mapped.sum(dtype=np.int64)) == 7 * mapped.size  # touches all 48 MB
    assert rss_file_kb() - before > 30_000
    data_module.release_pages(mapped)
    assert rss_file_kb() - before < 5_000


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_a_first_decoding_does_not_keep_what_it_wrote_resident(tmp_path, monkeypatch):
    """The cache file's written pages go back to the page cache chunk by chunk:
    a 100k-image folder at 256x256 would otherwise stay resident (19.7 GB)."""
    from diffusion_keras.data import image_cache

    monkeypatch.setattr(image_cache, "CHUNK", 16)
    image = np.full((512, 512, 3), 7, np.uint8)  # 0.8 MB; 128 of them are 100 MB
    before, highest = rss_file_kb(), [0]

    def decode(path):
        highest[0] = max(highest[0], rss_file_kb() - before)
        return image

    paths = [str(tmp_path / f"{index}.png") for index in range(128)]
    kept, skipped = image_cache._decode_into(
        str(tmp_path / "images.npy"), str(tmp_path), paths, 512, decode, workers=1
    )
    assert (len(kept), skipped) == (128, [])
    assert highest[0] < 40_000  # about two chunks (25 MB), not the whole file
    assert np.load(tmp_path / "images.npy", mmap_mode="r")[127, 5, 5, 1] == 7


def test_an_epoch_hands_pages_back_as_it_goes(monkeypatch):
    calls = []
    monkeypatch.setattr(data_module, "release_pages", lambda images: calls.append(1))
    data = data_module.ImageData(np.zeros((40 * 8, 4, 4, 3), np.uint8))
    batches = list(data_module.epoch_batches(data, 8, 1, seed=0, epoch=0))
    assert len(batches) == 40
    assert len(calls) == 40 // data_module.RELEASE_EVERY + 1  # as it goes, and at the end


def test_holding_images_out_of_a_mapped_folder_keeps_the_rest_mapped(tmp_path, cache):
    from diffusion_keras.data.datasets import (
        IndexedImages,
        image_dataset,
        split_held_out,
        train_dataset,
    )

    folder = str(tmp_path / "images")
    write_png_folder(folder, count=24, nested=False)
    load_folder(folder, 16)
    mapped = load_folder(folder, 16)
    assert isinstance(mapped.images, np.memmap)
    train, held = split_held_out(mapped, 4, seed=3)
    assert isinstance(train.images, IndexedImages) and isinstance(held.images, np.ndarray)
    in_memory = ImageData(np.array(mapped.images), source="copy")
    expected_train, expected_held = split_held_out(in_memory, 4, seed=3)
    np.testing.assert_array_equal(np.asarray(train.images), expected_train.images)
    np.testing.assert_array_equal(held.images, expected_held.images)
    assert train.images.shape == (20, 16, 16, 3) and len(train.images) == 20
    np.testing.assert_array_equal(train.images[[2, 5]], expected_train.images[[2, 5]])
    streamed = np.concatenate([b.numpy() for b in image_dataset(train, 8)])
    np.testing.assert_allclose(streamed, expected_train.images / 255.0, atol=1e-7)
    batches = train_dataset(train, 4, 1, seed=0, epochs=1)
    reference = train_dataset(expected_train, 4, 1, seed=0, epochs=1)
    for a, b in zip(batches, reference):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
