"""Keras 3 on every backend: TensorFlow, JAX and PyTorch train, sample, edit,
save and resume alike, and a model file gives the same images on all three.

Each backend runs in a process of its own (`KERAS_BACKEND` is read once, when
Keras is imported). The README's commands run per backend in `test_docs.py`.

The tolerance for the same images across backends, `SAME_IMAGES`: the three
run the same float32 arithmetic in a different order (XLA, oneDNN and
PyTorch's kernels sum a convolution's products differently), so one network
evaluation differs by a few float32 roundings (measured: at most 5e-7 in
[0, 1] pixels for one-step denoising), and a sampling loop carries and
amplifies that over its steps (measured, 10-20 steps, every sampler and
edit: at most 6.5e-5, JAX against the other two). 1/1024, a quarter of one
8-bit level, keeps 15x room over that and still means that the PNGs written
differ by at most one level in any pixel.
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BACKENDS, ROOT, one_line_error

pytestmark = pytest.mark.slow

SAME_IMAGES = 1.0 / 1024
WORKER = os.path.join(ROOT, "tests", "backend_images.py")
NAMES = [p.values[0] for p in BACKENDS]


def on_backend(backend, *args, timeout=600, env=None, cwd=None):
    """Runs `python ARGS` with `KERAS_BACKEND=backend`; the finished process."""
    env = dict(os.environ if env is None else env, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)  # fmt: skip


def installed(backend):
    return not any(m.name == "skipif" and m.args[0] for m in BACKENDS[NAMES.index(backend)].marks)


def needs(backend):
    return pytest.mark.skipif(
        not installed(backend), reason=f"{backend} is not installed (pip install -e .[{backend}])"
    )


@pytest.fixture(scope="module")
def images_by_backend(tmp_path_factory):
    """`{(trained on, sampled on): {kind: images}}` for every pair of the
    installed backends."""
    root = tmp_path_factory.mktemp("backends")
    backends = [b for b in NAMES if installed(b)]
    found = {}
    for source in backends:
        model = root / f"{source}.keras"
        done = on_backend(source, WORKER, "train", model)
        assert done.returncode == 0, done.stderr[-3000:]
        for target in backends:
            out = root / f"{source}_on_{target}.npz"
            done = on_backend(target, WORKER, "images", model, out)
            assert done.returncode == 0, done.stderr[-3000:]
            found[source, target] = dict(np.load(out))
    return found


@pytest.mark.parametrize("source,target", [
    pair for pair in itertools.permutations(NAMES, 2)
])  # fmt: skip
def test_a_model_file_gives_the_same_images_on_another_backend(images_by_backend, source, target):
    if (source, target) not in images_by_backend:
        pytest.skip(f"{source} or {target} is not installed")
    here, there = images_by_backend[source, source], images_by_backend[source, target]
    assert sorted(here) == ["ddim_20", "ddim_eta_1", "default", "denoising", "guidance",
                            "image_to_image", "inpainting"]  # fmt: skip
    for kind in here:
        assert here[kind].shape == (16, 16, 16, 3), kind
        difference = float(np.abs(here[kind] - there[kind]).max())
        print(f"{source} -> {target}, {kind}: {difference:.2e}")
        assert difference <= SAME_IMAGES, (kind, difference)
        levels = np.abs(np.round(here[kind] * 255) - np.round(there[kind] * 255))
        assert levels.max() <= 1, kind


def test_the_images_are_not_all_alike(images_by_backend):
    # The comparison means something: the kinds of sampling differ from
    # each other, and the images of a batch from each other.
    images = images_by_backend["tensorflow", "tensorflow"]
    assert float(np.abs(images["default"] - images["ddim_eta_1"]).mean()) > 0.01
    assert float(np.abs(images["default"] - images["guidance"]).mean()) > 0.001
    assert float(images["default"].std(axis=0).mean()) > 0.01


JAX_DATA_PARALLEL = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np, keras
from conftest import blob_images, tiny_model
from diffusion_keras.training.distribute import make_strategy
data = blob_images(128)

def train(strategy):
    model = tiny_model(seed=3)
    model.adapt(data)
    start = [w.copy() for w in model.network.get_weights()]
    model.fit(data, batch_size=16, epochs=1, verbose=0, shuffle=False)  # 8 steps
    return model, start

one, start = train(make_strategy("default"))
strategy = make_strategy("mirrored")
two, _ = train(strategy)
print("replicas", strategy.num_replicas_in_sync)
print("steps", int(keras.ops.convert_to_numpy(two.train_steps)))
print("devices", len(two.network.trainable_variables[0].value.sharding.device_set))
for name in ["network", "ema_network"]:
    a, b = getattr(one, name).get_weights(), getattr(two, name).get_weights()
    print(name, max(float(np.abs(x - y).max()) for x, y in zip(a, b)))
print("moved", max(float(np.abs(x - y).max()) for x, y in zip(one.network.get_weights(), start)))
"""


@needs("jax")
def test_jax_data_parallel_on_two_host_devices_matches_one_device_after_8_steps():
    done = on_backend("jax", "-c", JAX_DATA_PARALLEL, cwd=os.path.join(ROOT, "tests"))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = dict(line.split() for line in done.stdout.strip().splitlines())
    print(figures)
    assert figures["replicas"] == "2" and figures["devices"] == "2"
    assert figures["steps"] == "8"
    moved = float(figures["moved"])
    assert moved > 1e-3  # the steps really moved the weights
    # The tolerance of the TensorFlow mirrored test (test_distribute.py).
    assert float(figures["network"]) < 1e-6 * max(1.0, moved * 100)
    assert float(figures["ema_network"]) < 1e-6 * max(1.0, moved * 100)


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@needs("jax")
def test_two_jax_processes_on_127_0_0_1_train_as_one(tmp_path):
    # `keras.distribution.initialize` joins them (gloo on the CPU); process 0
    # writes the run, process 1 its own `.worker_1`.
    flags = [*TINY, "--epochs", 1]
    done = on_backend("jax", os.path.join(ROOT, "train.py"), "--output", tmp_path / "single",
                      "--strategy", "default", *flags, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    address = f"127.0.0.1:{free_port()}"
    processes = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
                   KERAS_DISTRIBUTION_JOB_ADDRESSES=address, KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                   KERAS_DISTRIBUTION_PROCESS_ID=str(index))  # fmt: skip
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--output",
                   str(tmp_path / "multi"), "--strategy", "multiworker",
                   *map(str, flags)]  # fmt: skip
        processes.append(subprocess.Popen(
            command, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE))  # fmt: skip
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    assert (tmp_path / "multi" / ".worker_1" / "model.keras").exists()
    check = (
        "import sys, numpy as np, keras, diffusion_keras as dk\n"
        "a, b = (dk.load_model(p) for p in sys.argv[1:3])\n"
        "print(max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights())))\n"
    )
    done = on_backend("jax", "-c", check, tmp_path / "single" / "model.keras",
                      tmp_path / "multi" / "model.keras")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip()) < 1e-6  # measured: 6.0e-8


TINY = ["--image-size", 16, "--widths", "8,16", "--block-depth", 1, "--embedding-dims", 8,
        "--batch-size", 8, "--dataset-repetitions", 1, "--plot-images", 2,
        "--plot-diffusion-steps", 2, "--verbose", 0, "--seed", 2,
        "--data", "builtin:flowers:32", "--conditional"]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_resumed_on_a_backend_ends_as_an_uninterrupted_one(tmp_path, backend):
    train = os.path.join(ROOT, "train.py")
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    for args in ([train, "--output", whole, "--epochs", 2, *TINY],
                 [train, "--output", halves, "--epochs", 1, *TINY],
                 [train, "--output", halves, "--resume", "--epochs", 2]):  # fmt: skip
        done = on_backend(backend, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    check = (
        "import sys, numpy as np, keras, diffusion_keras as dk\n"
        "a, b = (dk.load_model(p) for p in sys.argv[1:3])\n"
        "print(keras.backend.backend(), int(keras.ops.convert_to_numpy(b.train_steps)),\n"
        "      max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights())))\n"
    )
    done = on_backend(backend, "-c", check, whole / "model.keras", halves / "model.keras")
    assert done.returncode == 0, done.stderr[-3000:]
    name, steps, difference = done.stdout.split()
    assert name == backend and int(steps) == 8
    assert float(difference) < 1e-6, difference


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_latent_run_trains_and_samples_on_each_backend(tmp_path, backend):
    # Its autoencoder trains first (SSIM and PSNR in `keras.ops`), then the
    # U-Net on the latents, then `generate.py` decodes.
    flags = [*TINY[:-3], "--data", "builtin:flowers:32", "--latent", "--autoencoder-epochs", 1,
             "--autoencoder-crop", 16]  # fmt: skip
    done = on_backend(backend, os.path.join(ROOT, "train.py"), "--output", tmp_path / "run",
                      "--epochs", 1, *flags, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "latent.png"
    model = tmp_path / "run" / "model.keras"
    done = on_backend(backend, os.path.join(ROOT, "generate.py"), model, "--num-images", 2,
                      "--steps", 2, "--no-progress", "--output", out)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.exists() and (tmp_path / "run" / "autoencoder.keras").exists()


@needs("torch")
def test_torch_asked_for_several_devices_says_so_in_one_line(tmp_path):
    done = on_backend("torch", os.path.join(ROOT, "train.py"), "--output", tmp_path / "run",
                      "--strategy", "mirrored", *TINY, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    line = one_line_error(done)
    assert "one device" in line and "KERAS_BACKEND=jax" in line


ADVERSARIAL_AUTOENCODER = """
import numpy as np, keras
from diffusion_keras import Autoencoder
from diffusion_keras.utils.errors import DiffusionKerasError
autoencoder = Autoencoder(widths=(8, 16, 16), discriminator_weight=0.1)
autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3))
try:
    autoencoder.fit(np.zeros((8, 16, 16, 3), "float32"), batch_size=8, verbose=0)
except DiffusionKerasError as error:
    print(error)
"""


@needs("jax")
def test_a_tensorflow_only_feature_names_the_backend_that_has_it():
    # The autoencoder's patch discriminator trains with two optimizers, which
    # only the TensorFlow step does.
    done = on_backend("jax", "-c", ADVERSARIAL_AUTOENCODER)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "TensorFlow backend only" in lines[0] and "KERAS_BACKEND=tensorflow" in lines[0]
    assert "this process runs on jax" in lines[0]


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "tensorflow"])
def test_generate_runs_on_jax_and_torch_without_tensorflow(tmp_path, backend):
    # The GPU machines this project is lent carry JAX and PyTorch but no
    # TensorFlow: a model file samples there. `import tensorflow` is made to fail.
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "tensorflow.py").write_text("raise ImportError('no TensorFlow here')\n")
    model = tmp_path / "model.keras"
    done = on_backend("tensorflow", WORKER, "train", model)
    assert done.returncode == 0, done.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(blocker))
    out = tmp_path / "grid.png"
    done = on_backend(backend, os.path.join(ROOT, "generate.py"), model, "--num-images", 4,
                      "--steps", 3, "--seed", 1, "--no-progress", "--output", out,
                      env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.exists()
