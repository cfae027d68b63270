"""Training data: image folders, tensorflow-datasets, and `builtin:flowers`.

Images are decoded and resized once into a uint8 array held in memory
(`ImageData`); `train_dataset` then serves shuffled (and, when asked, flipped)
float batches from it. Every epoch's order and flips are a function of (seed, epoch) alone, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

import concurrent.futures
import dataclasses
import itertools
import os
import warnings

import numpy as np

from diffusion_keras.data.captions import flower_caption, folder_captions, is_caption_file
from diffusion_keras.data.flowers import CLASS_NAMES, DEFAULT_COUNT, flower_images, flower_labels
from diffusion_keras.data.image_cache import decoded_folder, release_pages
from diffusion_keras.utils import network
from diffusion_keras.utils.errors import DataError

# The largest image decoded, in pixels (about 8,000 x 8,000): a file that
# declares more (a decompression bomb, or a scan far beyond any training size)
# is skipped before its pixels are read, so decoding stays within about 200 MB.
MAX_PIXELS = 64 * 1024 * 1024


class ImageFileError(ValueError):
    """A file that cannot be used as an image, with the reason in one line."""


def image_extensions():
    """The file extensions Pillow reads (jpg, png, bmp, gif, webp, tiff, ...)."""
    from PIL import Image

    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(sorted(readable))
BUILTIN_PREFIX = "builtin:"
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass
class ImageData:
    """Decoded images `(n, size, size, channels)` uint8, with optional labels.

    Attributes:
        images: numpy uint8 array.
        labels: numpy int array `(n,)` or None (for a text model's training:
            the captions' tokens `(n, words)`).
        class_names: list of str, one per label value, or None.
        source: str. Where the images came from.
        captions: list of str, one per image ("" for none), or None.
    """

    images: np.ndarray
    labels: np.ndarray = None
    class_names: list = None
    source: str = ""
    captions: list = None

    def __len__(self):
        return len(self.images)


# -- decoding --------------------------------------------------------------


def to_rgb_array(image):
    """A PIL image of any mode as an (h, w, 3) uint8 array."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit and float grayscale: scale to 8 bits rather than clip.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(array.max(), 1.0)
        if image.mode == "F":
            top = 1.0 if array.max() <= 1.0 else array.max()
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Composite over white: transparent areas become background, not black.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_array(array, image_size, center_crop=False):
    """Resizes an (h, w, 3) uint8 array to (size, size, 3) with bilinear
    filtering, after an optional centre crop to a square."""
    from PIL import Image

    if center_crop:
        height, width = array.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        array = array[top : top + side, left : left + side]
    image = Image.fromarray(array)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_image(path, use=None):
    """Opens and loads one image file with Pillow and returns `use(image)`,
    computed while the file is open (by default the (h, w, 3) uint8 array,
    `to_rgb_array`).

    Raises `ImageFileError` with the reason in one line for a file Pillow cannot
    read (not an image, an unknown format, truncated, corrupt) or one larger than
    `MAX_PIXELS`, which is refused before its pixels are read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_PIXELS:
                image.close()
                raise ImageFileError(f"{width}x{height} is more than {MAX_PIXELS:,} pixels")
            with image:
                image.load()
                return (use or to_rgb_array)(image)
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError("not an image Pillow reads") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageFileError(
            f"its declared size is more than {MAX_PIXELS:,} pixels (a decompression bomb?)"
        ) from None
    except FileNotFoundError:
        raise ImageFileError("no such file") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImageFileError(f"cannot be decoded ({reason})") from None


def decode_image_file(path, image_size, center_crop=False):
    """Decodes one image file to (size, size, 3) uint8; raises `ImageFileError`
    (see `read_image`) for a file it cannot use."""
    return resize_array(read_image(path), image_size, center_crop)


def list_image_files(folder):
    """Image files below `folder` at any depth, sorted, hidden ones left out.

    Returns `(image_paths, other_paths)`; the second lists files that do not
    have an image extension.
    """
    image_paths, other_paths = [], []
    extensions = image_extensions()
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if name.lower().endswith(extensions):
                image_paths.append(path)
            else:
                other_paths.append(path)
    return sorted(image_paths), sorted(other_paths)


def _warn_skipped(skipped, what, reasons=None):
    if skipped:
        reasons = reasons or {}
        named = [f"{p} ({reasons[p]})" if p in reasons else p for p in skipped[:3]]
        shown = ", ".join(named) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} {what}: {shown}", stacklevel=3)


def load_folder(folder, image_size, center_crop=False, with_labels=False, workers=None,
                cache=True, with_captions=False):  # fmt: skip
    """Decodes every image below `folder` (any format Pillow reads, any depth).

    Unreadable files are skipped with one warning naming how many. With
    `with_labels`, the first-level subfolder of each image is its class;
    with `with_captions`, captions come from `metadata.jsonl` or sidecar
    `.txt` files (`diffusion_keras.data.captions.folder_captions`).
    With `cache`, the decoded images are kept on disk and later calls map
    them read-only instead of decoding again (`diffusion_keras.data.image_cache`).
    """
    if not os.path.exists(folder):
        raise DataError(f"data folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise DataError(f"data path {folder!r} is not a folder")
    paths, others = list_image_files(folder)
    if not paths:
        raise DataError(
            f"no image files (jpg, png, webp, bmp, gif, tiff, ...) found in {folder!r}"
            + (f"; it has {len(others)} other files" if others else "")
        )

    stems = {os.path.splitext(path)[0] for path in paths}
    _warn_skipped([p for p in others if not is_caption_file(p, stems)], "files that are not images")

    reasons = {}

    def decode(path):
        try:
            return decode_image_file(path, image_size, center_crop)
        except ImageFileError as error:
            reasons[path] = str(error)
            return None

    decode.reasons = reasons

    workers = workers or os.cpu_count() or 1
    found = None
    if cache:

        found = decoded_folder(folder, paths, image_size, center_crop, decode, workers)
    if found is not None:
        images, kept, skipped = found
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(decode, paths))
        kept = [p for p, a in zip(paths, arrays) if a is not None]
        skipped = [p for p, a in zip(paths, arrays) if a is None]
        images = np.stack([a for a in arrays if a is not None]) if kept else None
    if not kept:
        raise DataError(f"none of the {len(paths)} image files in {folder!r} could be read")
    _warn_skipped(skipped, "unreadable image files", reasons)
    labels = class_names = None
    if with_labels:
        classes = [os.path.relpath(p, folder).split(os.sep)[0] for p in kept]
        if any(os.sep not in os.path.relpath(p, folder) for p in kept):
            raise DataError(
                f"class labels come from subfolders, but {folder!r} has images at its top level"
            )
        class_names = sorted(set(classes))
        labels = np.array([class_names.index(c) for c in classes], dtype=np.int32)
    captions = folder_captions(folder, kept) if with_captions else None
    return ImageData(images, labels, class_names, source=folder, captions=captions)


# -- tensorflow-datasets ---------------------------------------------------


def load_tfds(name, image_size, data_dir=None, download=True, center_crop=False):
    """Loads every split of the tensorflow-datasets set `name`.

    A data set that is not prepared in `data_dir` is downloaded when its
    download hosts answer; otherwise this fails at once with one line rather
    than retrying for minutes.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown tensorflow-datasets data set {name!r}") from None
    except Exception as error:  # noqa: BLE001 - tfds raises several kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"could not open tfds data set {name!r}: {first}") from None
    if not builder.is_prepared():
        urls = list(builder.url_infos or {})
        if not download:
            raise DataError(f"tfds data set {name!r} is not downloaded in {builder.data_dir}")
        if urls and not network.hosts_reachable(urls):
            raise DataError(
                f"tfds data set {name!r} is not downloaded in {builder.data_dir} and "
                "its download site cannot be reached (no network?); use "
                "--data builtin:flowers or an image folder instead"
            )
        try:
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise DataError(f"could not download tfds data set {name!r}: {first}") from None
    features = builder.info.features
    image_key = (
        "image"
        if "image" in features
        else next((k for k, v in features.items() if isinstance(v, tfds.features.Image)), None)
    )
    if image_key is None:
        raise DataError(f"tfds data set {name!r} has no image feature")
    label_key = "label" if "label" in features else None
    split = "+".join(sorted(builder.info.splits.keys()))
    images, labels = [], []
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
        array = example[image_key]
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        images.append(resize_array(array[..., :3], image_size, center_crop))
        if label_key:
            labels.append(int(example[label_key]))
    if not images:
        raise DataError(f"tfds data set {name!r} has no images")
    class_names = None
    if label_key and hasattr(features[label_key], "names"):
        class_names = list(features[label_key].names)
    return ImageData(
        np.stack(images),
        np.array(labels, dtype=np.int32) if label_key else None,
        class_names,
        source=f"{TFDS_PREFIX}{name}",
    )


# -- entry point -----------------------------------------------------------


def load_images(source, image_size=64, center_crop=False, with_labels=False, data_dir=None,
                with_captions=False):  # fmt: skip
    """Loads training images from a folder, `tfds:NAME` or `builtin:flowers[:N]`.

    Args:
        source: str. An image folder, `tfds:NAME` (e.g. `tfds:oxford_flowers102`)
            or `builtin:flowers` (2048 generated flowers; `builtin:flowers:N`
            for N of them).
        image_size: int. Images are resized to `image_size` squared.
        center_crop: bool. Crop to a centred square before resizing.
        with_labels: bool. Also return class labels (folder: first-level
            subfolders; `builtin:flowers`: petal colour, red, green, blue or
            purple).
        data_dir: str or None. tensorflow-datasets data folder.
        with_captions: bool. Also return a caption per image (folder:
            `metadata.jsonl` or sidecar `.txt` files; `builtin:flowers`: made
            from each flower's drawing parameters).
    """

    if source.startswith(BUILTIN_PREFIX):
        name, _, count = source[len(BUILTIN_PREFIX) :].partition(":")
        if name != "flowers":
            raise DataError(f"unknown built-in data set {name!r}; the one built in is 'flowers'")
        try:
            count = int(count) if count else DEFAULT_COUNT
        except ValueError:
            raise DataError(f"builtin:flowers:N needs a whole number, got {count!r}") from None
        if count < 1:
            raise DataError(f"builtin:flowers:N needs N >= 1, got {count}")
        captions = None
        if with_captions:

            captions = [flower_caption(index) for index in range(count)]
        if not with_labels:
            return ImageData(flower_images(count, image_size), source=source, captions=captions)
        return ImageData(
            flower_images(count, image_size), flower_labels(count), list(CLASS_NAMES), source,
            captions,
        )  # fmt: skip
    if source.startswith(TFDS_PREFIX):
        if with_captions:
            raise DataError(
                f"{source} has no captions here; use builtin:flowers or an image folder with "
                "metadata.jsonl or .txt captions"
            )
        return load_tfds(source[len(TFDS_PREFIX) :], image_size, data_dir, center_crop=center_crop)
    return load_folder(source, image_size, center_crop, with_labels, with_captions=with_captions)


# Batches between handing a memory map's pages back. Every batch: reading
# rows at random maps the page cache's whole large folios (up to 2 MB) around
# each image, so 16 shuffled batches of 64 images at 256x256 (200 MB) held
# 2 GB resident; handing them back after each batch costs 0.08 ms and keeps
# that under 200 MB (Linux 6.18).
RELEASE_EVERY = 1


def epoch_batches(data, batch_size, repetitions, seed, epoch, flip=False, labels=False):
    """The uint8 batches of one epoch, a function of (seed, epoch) alone.

    An epoch is `repetitions` shuffled passes over the images; the last
    incomplete batch is dropped, as in the book. With `labels`, each batch is
    `(images, labels)`.
    """
    rng = np.random.default_rng([seed, epoch])
    count = len(data.images)
    order = np.concatenate([rng.permutation(count) for _ in range(repetitions)])
    flips = rng.uniform(size=len(order)) < 0.5 if flip else None
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        batch = data.images[index]
        if (start // batch_size) % RELEASE_EVERY == RELEASE_EVERY - 1:
            release_pages(data.images)
        if flip:
            mask = flips[start : start + batch_size]
            batch = np.where(mask[:, None, None, None], batch[:, :, ::-1], batch)
        yield (batch, data.labels[index]) if labels else batch
    release_pages(data.images)


def steps_per_epoch(data, batch_size, repetitions):
    return (len(data.images) * repetitions) // batch_size


def train_dataset(
    data, batch_size, repetitions=5, seed=0, flip=False, first_epoch=0, epochs=None, labels=False,
    first_step=0,
):  # fmt: skip
    """A `tf.data.Dataset` of float32 batches in [0, 1] (of `data.images`
    as they are when those are float32: latents) for epochs
    `first_epoch`, `first_epoch + 1`, ... (forever when `epochs` is None),
    the first of them from its batch `first_step` on (a resumed epoch).
    With `labels`, elements are `(images, labels)`."""
    import tensorflow as tf

    if labels:
        require_labels(data)
    if steps_per_epoch(data, batch_size, repetitions) < 1:
        raise DataError(
            f"{len(data.images)} images x {repetitions} repetitions is fewer than "
            f"one batch of {batch_size}; lower --batch-size or add images"
        )
    shape = (batch_size,) + data.images.shape[1:]

    def batches():
        epoch = first_epoch
        while epochs is None or epoch < epochs:
            batches = epoch_batches(data, batch_size, repetitions, seed, epoch, flip, labels)
            yield from itertools.islice(batches, first_step if epoch == first_epoch else 0, None)
            epoch += 1

    pixels = data.images.dtype == np.uint8
    signature = tf.TensorSpec(shape, tf.uint8 if pixels else tf.float32)
    if labels:
        signature = (signature, tf.TensorSpec((batch_size,) + data.labels.shape[1:], tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)

    def to_float(x):
        # uint8 pixels to [0, 1]; float32 arrays (a latent run's cached latents) as they are.
        return tf.cast(x, tf.float32) / 255.0 if pixels else x

    if labels:
        dataset = dataset.map(lambda x, y: (to_float(x), y))
    else:
        dataset = dataset.map(to_float)
    # Two batches ready ahead are plenty: the whole pipeline runs at about 17,000
    # images/s, hundreds of times a training step's rate.
    return without_autotune(dataset.prefetch(2))


def random_crops(dataset, size, seed=0):
    """`dataset`'s batches with each image cut to a `size` x `size` square at
    a seeded random place (the same places for the same seed and batch order).

    A convolutional autoencoder trained on crops takes four updates for one
    at a quarter of the image (64 of 128 pixels): at 128x128 its held-out
    PSNR was 16.5 dB after 3.0 CPU minutes on crops against 16.1 dB after
    9.4 on whole images (`bench/autoencoder.py --crop 64`)."""
    import tensorflow as tf

    def crop(step, batch):
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), step]), tf.shape(batch, out_type=tf.int64)[0]
        )
        channels = tf.shape(batch)[-1]
        return tf.map_fn(
            lambda pair: tf.image.stateless_random_crop(pair[0], [size, size, channels], pair[1]),
            (batch, seeds), fn_output_signature=batch.dtype,
        )  # fmt: skip

    return without_autotune(dataset.enumerate().map(crop))


def without_autotune(dataset):
    """`dataset` with tf.data's autotuning off.

    With it on, tearing an iterator down (the end of every `fit`, `adapt` or
    `evaluate` pass over a dataset) waits for the autotuning thread's sleep,
    which starts at 10 ms and doubles while the iterator lives: a pass that
    computes in 10.9 s returns after 20.47 s, one of 41 s after 81.91 s. Our
    pipelines are a numpy generator and a cast, with nothing to tune.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def require_labels(data):
    """Raises `DataError` unless `data` has labels of at least two classes."""
    if data.labels is None:
        raise DataError(
            f"{data.source or 'these images'} has no class labels; use an image folder "
            "with one subfolder per class, or a tfds data set with labels"
        )
    if data.labels.ndim > 1:
        return  # a text model's caption tokens, not classes
    if len(np.unique(data.labels)) < 2:
        raise DataError(f"{data.source} has images of only one class; classes need two or more")


def split_held_out(data, count, seed=0):
    """`(train, held_out)`: `count` images set aside (chosen by `seed`), for
    measuring KID on images the model never trained on."""
    if not 0 < count < len(data.images):
        raise DataError(f"cannot hold out {count} of {len(data.images)} images")
    order = np.random.default_rng([seed, 7]).permutation(len(data.images))
    kept, held = np.sort(order[count:]), np.sort(order[:count])
    # Mapped images (a folder's cache) stay mapped: the training part reads
    # its rows on demand instead of copying most of the file into memory.
    mapped = isinstance(data.images, (np.memmap, IndexedImages))
    rows = IndexedImages(data.images, kept) if mapped else data.images[kept]
    return _rows_of(data, kept, rows), _rows_of(data, held, np.asarray(data.images[held]))


def random_subset(data, count, seed):
    """`count` of `data`'s images (all of them when it has no more), chosen by
    `seed` (an int or a sequence of ints), in their order, with their labels
    and captions."""
    if count >= len(data.images):
        return data
    index = np.sort(np.random.default_rng(seed).permutation(len(data.images))[:count])
    return _rows_of(data, index, np.asarray(data.images[index]))


def _rows_of(data, index, rows):
    labels = None if data.labels is None else data.labels[index]
    captions = None if data.captions is None else [data.captions[i] for i in index]
    return ImageData(rows, labels, data.class_names, data.source, captions)


class IndexedImages:
    """Rows `index` of a memory-mapped image array, read when indexed: what
    `split_held_out` keeps of mapped images, so that holding images out of a
    100,000-image folder does not copy the other 99,800 into memory.

    Indexing (an int, a slice or an index array) returns a numpy array, as
    indexing the array would; `release_pages` reaches the mapped file."""

    def __init__(self, array, index):
        if isinstance(array, IndexedImages):
            array, index = array.array, array.index[index]
        self.array, self.index = array, np.asarray(index)

    @property
    def shape(self):
        return (len(self.index),) + tuple(self.array.shape[1:])

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def ndim(self):
        return self.array.ndim

    @property
    def _mmap(self):
        return getattr(self.array, "_mmap", None)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        return np.asarray(self.array[self.index[key]])

    def __array__(self, dtype=None, copy=None):
        rows = np.asarray(self.array[self.index])
        return rows if dtype is None else rows.astype(dtype)

    def astype(self, dtype):
        return np.asarray(self).astype(dtype)


def image_dataset(data, batch_size):
    """The images once, in order, as float32 batches (for `adapt` and eval),
    read a batch at a time, so that memory-mapped images are never all in
    memory."""
    import tensorflow as tf

    images = data.images

    def batches():
        for start in range(0, len(images), batch_size):
            yield np.array(images[start : start + batch_size])
            if (start // batch_size) % RELEASE_EVERY == RELEASE_EVERY - 1:
                release_pages(images)
        release_pages(images)

    if images.dtype != np.uint8:  # latents: as they are
        signature = tf.TensorSpec((None,) + images.shape[1:], tf.float32)
        return without_autotune(tf.data.Dataset.from_generator(batches, output_signature=signature))
    signature = tf.TensorSpec((None,) + images.shape[1:], tf.uint8)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return without_autotune(dataset.map(lambda x: tf.cast(x, tf.float32) / 255.0))
