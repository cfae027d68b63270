"""A latent run's start-up: encoding the images once against mapping them again.

    python bench/latent_cache.py                    # 256 images at 256x256, f=4
    python bench/latent_cache.py --images 1024 --size 128

`train.py --latent` encodes its images once into `RUN_DIR/latents.npy`
(`diffusion_keras.training.latent.encoded_once`); a later start of the run hashes the
images and the autoencoder's weights, finds the same fingerprint and maps the
file instead of encoding again. This times both starts on random images with
the default (untrained: cost does not depend on the weights) `Autoencoder`,
in CPU and wall seconds, and prints what they come to for 100,000 images
(both grow linearly with the count). Run by hand, never by CI.
"""

import argparse
import os
import resource
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(function):
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = function()
    return result, cpu_seconds() - cpu, time.perf_counter() - wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--factor", type=int, default=4, choices=[4, 8])
    args = parser.parse_args()

    import numpy as np

    import diffusion_keras as dk
    from diffusion_keras.data.datasets import ImageData
    from diffusion_keras.training.latent import encoded_once

    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    data = ImageData(images, source="random")
    model = dk.DiffusionModel(image_size=args.size, autoencoder=dk.Autoencoder(factor=args.factor))
    model.encode_images(images[:2], 2)  # trace once, untimed
    with tempfile.TemporaryDirectory() as run_dir:
        first, first_cpu, first_wall = timed(lambda: encoded_once(model, data, run_dir))
        again, again_cpu, again_wall = timed(lambda: encoded_once(model, data, run_dir))
        assert np.array_equal(np.asarray(first.images), np.asarray(again.images))
    scale = 100_000 / args.images
    print(f"{args.images} images at {args.size}x{args.size}, f={args.factor}: "
          f"{images.nbytes / 1e6:.0f} MB of pixels, latents {model.sample_shape}")  # fmt: skip
    print(f"first start (encode):  {first_cpu:8.2f} CPU s {first_wall:8.2f} wall s; "
          f"100,000 images: {first_cpu * scale / 3600:.2f} CPU h")  # fmt: skip
    print(f"second start (hash):   {again_cpu:8.2f} CPU s {again_wall:8.2f} wall s; "
          f"100,000 images: {again_cpu * scale / 60:.2f} CPU min")  # fmt: skip
    print(f"second / first: {again_cpu / first_cpu:.4f} in CPU time, "
          f"{again_wall / first_wall:.4f} in wall time (target < 0.10)")  # fmt: skip


if __name__ == "__main__":
    main()
