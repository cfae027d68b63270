"""Sampling speed per sampler and guidance method, at the book's model size.

    python bench/samplers.py            # about 4 minutes on 2 CPU cores
    python bench/samplers.py --quick    # about a minute

Times `generate` for each way of sampling, on the book-size U-Net (64x64,
widths 32/64/96/128), and prints images/s, network evaluations per image and
the ratio to the book's DDIM at 20 steps measured in the same run. Weights are
untrained (speed does not depend on them). Run by hand, never by CI.
"""

import argparse
import os
import time

os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")
import diffusion_keras  # noqa: E402, F401, I001  first: its CPU-kernel choice holds
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from diffusion_keras import DiffusionModel  # noqa: E402
from diffusion_keras.models.classifier import NoiseClassifier  # noqa: E402


def images_per_second(model, count, repeats, **sampling):
    model.generate(count, seed=0, **sampling)  # traces the compiled sampler
    start = time.perf_counter()
    for _ in range(repeats):
        model.generate(count, seed=0, **sampling)
    return count * repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")
    images = np.random.default_rng(0).uniform(size=(64, 64, 64, 3)).astype(np.float32)
    plain = DiffusionModel(seed=0, precision=args.precision)
    conditional = DiffusionModel(seed=0, precision=args.precision, num_classes=2)
    for model in (plain, conditional):
        model.adapt(images)
    classifier = NoiseClassifier.for_model(plain, ["a", "b"])
    cases = [
        ("ddim, 20 steps (the book's)", plain, 20, dict(diffusion_steps=20)),
        ("ddim eta=1, 20 steps", plain, 20, dict(diffusion_steps=20, eta=1.0)),
        ("dpmpp_2m, 20 steps", plain, 20, dict(diffusion_steps=20, sampler="dpmpp_2m")),
        ("dpmpp_2m, 10 steps", plain, 10, dict(diffusion_steps=10, sampler="dpmpp_2m")),
        ("conditional, w=1, 20 steps", conditional, 20,
         dict(diffusion_steps=20, class_labels=0)),
        ("classifier-free w=3, 20 steps", conditional, 40,
         dict(diffusion_steps=20, class_labels=0, guidance_scale=3.0)),
        ("classifier guidance s=1, 20 steps", plain, 20,
         dict(diffusion_steps=20, class_labels=0, classifier=classifier)),
    ]  # fmt: skip
    print(f"{args.images} images, {args.precision}\n")
    header = f"{'sampler':<36}{'images/s':>10}{'vs ddim-20':>12}{'U-Net evals':>13}"
    print(header)
    print("-" * len(header))
    baseline = None
    for label, model, evaluations, sampling in cases:
        rate = images_per_second(model, args.images, repeats, **sampling)
        baseline = baseline or rate
        print(f"{label:<36}{rate:>10.2f}{rate / baseline:>11.2f}x{evaluations:>13}")
    print("\nclassifier guidance adds a forward and a backward pass of the classifier per step")


if __name__ == "__main__":
    main()
