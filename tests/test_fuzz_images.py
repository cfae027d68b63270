"""Bad image files, fuzzed: every one of a few hundred seeded mutations of valid
PNG and JPEG files is read or skipped with a reason, with no traceback, no hang
and a bounded amount of memory, in training's loader and in generate.py's."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import blob_images

MUTATIONS = 300
# The loader runs in a process whose address space is capped at this: a file
# that declared a huge size and were decoded anyway would fail it.
MEMORY_LIMIT = 1536 * 1024 * 1024


def png_with_size(width, height):
    """A PNG whose header declares `width` x `height` (a decompression bomb when
    large), with a valid CRC and a tiny body."""
    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


def mutated_files(folder, count=MUTATIONS, seed=0, mask=False):
    """Writes `count` mutated image files (of a 24x24 flower, or with `mask` of
    a black-and-white mask) into `folder`; returns their names."""
    rng = np.random.default_rng(seed)
    originals = {}
    for kind in ("png", "jpeg"):
        out = io.BytesIO()
        if mask:
            square = np.zeros((24, 24), np.uint8)
            square[6:18, 6:18] = 255
            Image.fromarray(square).save(out, "png")  # a JPEG's blur would add grey levels
        else:
            Image.fromarray((blob_images(1, 24, seed=1)[0] * 255).astype(np.uint8)).save(out, kind)
        originals[kind] = out.getvalue()
    names = []
    for i in range(count):
        kind = ("png", "jpeg")[i % 2]
        data = bytearray(originals[kind])
        extension = {"png": ".png", "jpeg": ".jpg"}[kind]
        how = i % 6
        if how == 0:  # flipped bytes
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        elif how == 1:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        elif how == 2:  # the other format's extension
            extension = {".png": ".jpg", ".jpg": ".png"}[extension]
        elif how == 3:  # a huge declared size
            data = bytearray(png_with_size(int(rng.integers(10_000, 200_000)),
                                           int(rng.integers(10_000, 200_000))))  # fmt: skip
            extension = ".png"
        elif how == 4:  # not an image at all
            data = bytearray(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
        # how == 5: left as it is
        name = f"file_{i:03d}{extension}"
        (folder / name).write_bytes(bytes(data))
        names.append(name)
    return names


CHILD = """
import json, resource, sys, warnings
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from diffusion_keras.data.datasets import load_folder
from diffusion_keras.editing.files import load_edit_images, load_masks
from diffusion_keras.utils.errors import DataError
folder = sys.argv[1]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    data = load_folder(folder, 16, cache=False)
read = len(data)
skipped_line = [str(w.message) for w in caught if "unreadable" in str(w.message)]
edit = {{"read": 0, "refused": 0, "lines": []}}
import os
for name in sorted(os.listdir(folder)):  # as --init-image
    try:
        load_edit_images([os.path.join(folder, name)], 16)
        edit["read"] += 1
    except ValueError as error:
        edit["refused"] += 1
        edit["lines"].append(str(error))
for name in sorted(os.listdir(sys.argv[2])):  # as --mask, for a 24x24 image
    try:
        load_masks(os.path.join(sys.argv[2], name), ["image.png"], [(24, 24)], 16)
        edit["read"] += 1
    except ValueError as error:
        edit["refused"] += 1
        edit["lines"].append(str(error))
print(json.dumps(dict(read=read, skipped=skipped_line, edit=edit)))
"""


@pytest.mark.slow
def test_fuzzed_images_are_read_or_skipped_with_a_reason(tmp_path):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    names = mutated_files(folder)
    masks = tmp_path / "masks"
    masks.mkdir()
    mask_names = mutated_files(masks, seed=1, mask=True)
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=MEMORY_LIMIT), str(folder), str(masks)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    skipped = int(report["skipped"][0].split()[1]) if report["skipped"] else 0
    edit = report["edit"]
    print(f"{len(names)} files tried: {report['read']} read, {skipped} skipped; "
          f"{len(names) + len(mask_names)} as generate.py's --init-image and --mask: "
          f"{edit['read']} read, {edit['refused']} refused")  # fmt: skip
    assert report["read"] + skipped == len(names)
    assert report["read"] >= len(names) // 6 and skipped >= len(names) // 2
    # Each skipped file is named with its reason.
    assert "(" in report["skipped"][0] and ")" in report["skipped"][0]
    assert edit["read"] + edit["refused"] == len(names) + len(mask_names)
    assert edit["read"] >= len(names) // 3
    for line in edit["lines"]:
        assert "\n" not in line and line.startswith(("cannot read image", "cannot read mask",
                                                     "mask ")), line  # fmt: skip
    bombs = [line for line in edit["lines"] if "pixels" in line]
    assert bombs, "a huge declared size is refused before decoding"


def test_a_decompression_bomb_is_refused_before_its_pixels_are_read(tmp_path):
    from diffusion_keras.data.datasets import ImageFileError, decode_image_file

    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_size(100_000, 100_000))
    with pytest.raises(ImageFileError, match="more than 67,108,864 pixels"):
        decode_image_file(str(path), 16)
    path.write_bytes(png_with_size(9_000, 9_000))  # under Pillow's own limit, over ours
    with pytest.raises(ImageFileError, match="9000x9000 is more than 67,108,864 pixels"):
        decode_image_file(str(path), 16)


def test_every_format_pillow_reads_is_read_webp_included(tmp_path):
    from diffusion_keras.data.datasets import image_extensions, load_folder

    assert {".webp", ".tif", ".png", ".jpg"} <= set(image_extensions())
    image = Image.fromarray((blob_images(1, 20)[0] * 255).astype(np.uint8))
    for extension in ("webp", "tiff", "png"):
        image.save(tmp_path / f"flower.{extension}")
    (tmp_path / "notes.webp").write_bytes(b"not really a webp")
    with pytest.warns(UserWarning, match=r"notes\.webp \(not an image Pillow reads\)"):
        data = load_folder(str(tmp_path), 16, cache=False)
    assert len(data) == 3


def test_tfds_oxford_flowers102_trains_and_generates_under_mock_data(tmp_path, monkeypatch):
    """The book's data set through the real loading code (the builder, its
    features, decoding, crop and resize, labels) with examples tfds makes from
    the data set's own feature spec, and no download."""
    import tensorflow_datasets as tfds

    from diffusion_keras.config.run import TrainConfig
    from diffusion_keras.training.run import train
    from diffusion_keras.utils import network

    monkeypatch.setattr(network, "hosts_reachable", lambda urls, timeout=3.0: True)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    config = TrainConfig(data="tfds:oxford_flowers102", output=str(tmp_path / "run"),
                         image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8,
                         batch_size=8, dataset_repetitions=1, epochs=1, plot_images=2,
                         plot_diffusion_steps=2, conditional=True, center_crop=True)  # fmt: skip
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        model = train(config, verbose=0)
    assert model.num_classes == 102 and model.class_names[0] == "pink primrose"
    images = model.generate(2, 2, seed=0, class_labels=["pink primrose", 5])
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    assert os.path.exists(tmp_path / "run" / "model.keras")
