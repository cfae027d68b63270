import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Machine measurements (`precision.cpu_bfloat16_speedup`) go to a cache of the
# test session, for the CLIs the tests start too, not to the user's.
os.environ.setdefault(
    "DIFFUSION_KERAS_CACHE",
    os.path.join(__import__("tempfile").gettempdir(), f"diffusion_keras_test_cache_{os.getuid()}"),
)

# Before any test file imports TensorFlow, so that the tests run with the CPU
# kernels the package chooses (diffusion_keras.utils.runtime), as the CLIs they
# start in subprocesses do.
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import diffusion_keras  # noqa: E402, F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _backend(name):
    """A test parameter for Keras backend `name`, skipped with the install
    command where its library is missing (CI installs them all)."""
    import importlib.util

    missing = importlib.util.find_spec(name) is None
    extra = {"tensorflow": "", "jax": "[jax]", "torch": "[torch]"}[name]
    return pytest.param(name, marks=pytest.mark.skipif(
        missing, reason=f"{name} is not installed (pip install -e .{extra})"))  # fmt: skip


# Every Keras backend, for tests that run a command in a process of its own.
BACKENDS = [_backend(name) for name in ("tensorflow", "jax", "torch")]


def tensorflow_only(why):
    """Marks a test of something that exists on the TensorFlow backend only
    (`utils.backend.require_tensorflow`): skipped on the others, saying `why`."""
    import keras

    backend = keras.backend.backend()
    return pytest.mark.skipif(backend != "tensorflow", reason=f"TensorFlow only: {why}")
TINY = dict(image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8)


def tiny_model(**overrides):
    """A small DiffusionModel (16x16, widths 8/16), compiled, normalizer adapted."""
    import keras

    from diffusion_keras import DiffusionModel

    settings = dict(TINY, seed=1)
    settings.update(overrides)
    model = DiffusionModel(**settings)
    size = model.image_size
    model.adapt(np.random.default_rng(0).uniform(size=(8, size, size, model.channels)))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    return model


def conv_layers(network):
    """Every `Conv2D` in `network`, those inside `ResidualBlock`s included, in order."""
    import keras

    layers = network._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]


def fit_on_blobs(model, steps_per_epoch, epochs=1, learning_rate=3e-3):
    """Adapts `model` to 64 blob images and trains it on them (batch 16);
    returns `(data, history)`."""
    import tensorflow as tf

    data = blob_images(64, model.image_size)
    model.adapt(data)
    model.optimizer.learning_rate.assign(learning_rate)
    dataset = tf.data.Dataset.from_tensor_slices(data).repeat().shuffle(64, seed=0).batch(16)
    history = model.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=0)
    return data, history


def blob_images(count, size=16, seed=0):
    """Smooth images: a coloured disc on a plain background, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        background = rng.uniform(0.0, 0.3, 3)
        colour = rng.uniform(0.5, 1.0, 3)
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        inside = ((x - cx) ** 2 + (y - cy) ** 2 < r**2)[..., None]
        images[i] = np.where(inside, colour, background)
    return images


def smooth_images(count, size=16, seed=0):
    """Linear blends between two random colours along a random direction:
    images with the same small contrast everywhere, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        a, b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        along = np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)
        t = np.clip(0.5 + along, 0.0, 1.0)[..., None]
        images[i] = a * (1.0 - t) + b * t
    return images


def two_colour_images(count, size=16, seed=0):
    """Blob images of two classes that differ in colour: class 0 ("red") is
    tinted red, class 1 ("blue") blue. Returns `(images, labels)`."""
    images = blob_images(count, size, seed)
    labels = (np.arange(count) % 2).astype(np.int32)
    tints = np.array([[1.0, 0.2, 0.2], [0.2, 0.2, 1.0]], np.float32)[labels]
    return (0.35 * images + 0.65 * tints[:, None, None, :]).astype(np.float32), labels


def write_two_colour_folder(folder, count=64, size=16):
    """`folder/red/*.png` and `folder/blue/*.png` from `two_colour_images`."""
    from PIL import Image

    images, labels = two_colour_images(count, size)
    for i, (image, label) in enumerate(zip(images, labels)):
        sub = os.path.join(folder, ("red", "blue")[label])
        os.makedirs(sub, exist_ok=True)
        array = np.round(image * 255).astype(np.uint8)
        Image.fromarray(array).save(os.path.join(sub, f"img_{i:03d}.png"))
    return folder


def red_minus_blue(images):
    """Mean red minus mean blue of a batch of images."""
    means = np.asarray(images).mean(axis=(0, 1, 2))
    return float(means[0] - means[2])


def write_png_folder(folder, count=40, size=20, nested=True):
    """Writes `count` PNG images (of `size`, resized later) into `folder`."""
    from PIL import Image

    images = blob_images(count, size)
    paths = []
    for i, image in enumerate(images):
        sub = os.path.join(folder, f"class_{i % 2}" if nested else "")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"img_{i:03d}.png")
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def run_script(script, *args, timeout=600, cwd=None):
    """Runs one of the CLIs in a fresh Python process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
    )


def one_line_error(result):
    """Asserts a CLI failed as the house rules say: exit code 2, one line on
    stderr, no traceback. Returns the line."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def in_process_error(args):
    """Runs generate.py's main in this process as `cli.run` would; asserts it
    failed with exit code 2 and one line on stderr, and returns the line."""
    import contextlib
    import io

    from diffusion_keras.cli import generate
    from diffusion_keras.cli.common import run

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = run(generate.main, [str(a) for a in args])
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
    lines = stderr.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def png_folder(tmp_path):
    folder = tmp_path / "images"
    write_png_folder(str(folder))
    return str(folder)
