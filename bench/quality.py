"""Sample quality for a fixed training budget: KID as training goes on, and
per sampler at the end, with the same-run references KID needs to be read.

    python bench/quality.py            # about 12 minutes on 2 CPU cores
    python bench/quality.py --quick    # about 4 minutes

Trains the book's U-Net on `builtin:flowers` at 32x32 for a fixed number of
steps, holding out images it never sees, and measures KID between the held-out
images and as many generated ones. Features are InceptionV3's where its
ImageNet weights can be loaded, otherwise the documented random-feature
substitute (`diffusion_keras.metrics.random_features`), whose values compare
only with each other. Every KID is printed beside two references measured in
the same run with the same features: training images against held-out ones
(the floor: what a perfect model would score) and uniform noise (the ceiling).
Run by hand, never by CI.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from diffusion_keras import DiffusionModel  # noqa: E402
from diffusion_keras.data import load_images, split_held_out, train_dataset  # noqa: E402
from diffusion_keras.metrics import KernelInceptionDistance, feature_extractor  # noqa: E402
from diffusion_keras.precision import resolve_precision  # noqa: E402

REFERENCE_STEPS = 200


def kid_between(extractor, real, other, subset=128):
    metric = KernelInceptionDistance(extractor)
    for start in range(0, len(real) - subset + 1, subset):
        metric.update_state(real[start : start + subset], other[start : start + subset])
    return float(metric.result())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the budget")
    parser.add_argument("--steps", type=int, default=800, help="training steps (batch 64)")
    parser.add_argument("--held-out", type=int, default=256, help="images held out for KID")
    parser.add_argument("--features", default="auto", choices=["auto", "inception", "random"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps // 4 if args.quick else args.steps
    size, batch = args.image_size, 64
    precision = resolve_precision("auto")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")

    data = load_images("builtin:flowers", size)
    train_data, held_out = split_held_out(data, args.held_out, args.seed)
    real = held_out.images.astype(np.float32) / 255.0
    extractor = feature_extractor(args.features, size)
    rng = np.random.default_rng(args.seed)
    training_sample = train_data.images[rng.choice(len(train_data), len(real), replace=False)]
    floor = kid_between(extractor, real, training_sample.astype(np.float32) / 255.0)
    ceiling = kid_between(extractor, real, rng.uniform(size=real.shape).astype(np.float32))
    print(
        f"{extractor.name} features; {len(train_data)} training and {len(real)} held-out "
        f"images at {size}x{size}; {steps} steps of {batch} in {precision}"
    )
    print(f"reference KID: training vs held-out {floor:.4f} (floor), noise {ceiling:.4f}\n")

    model = DiffusionModel(image_size=size, seed=args.seed, precision=precision)
    model.adapt(train_data.images.astype(np.float32) / 255.0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    dataset = train_dataset(train_data, batch, repetitions=1, seed=args.seed)

    def measure(reference=None, **sampling):
        """KID, images/s and, given the images of `reference`, generated from
        the same noise (the same seed), the mean distance to them."""
        start = time.perf_counter()
        images = model.generate(len(real), seed=args.seed, **sampling)
        seconds = time.perf_counter() - start
        distance = None if reference is None else float(np.abs(images - reference).mean())
        return kid_between(extractor, real, images), len(real) / seconds, distance

    def row(label, kid, rate, distance=None):
        position = (kid - floor) / (ceiling - floor)
        away = f"{distance:>10.4f}" if distance is not None else ""
        print(f"{label:<34}{kid:>9.4f}{position:>14.1%}{rate:>10.2f}{away}", flush=True)

    header = f"{'':<34}{'KID':>9}{'floor->noise':>14}{'images/s':>10}"
    print("KID during training (ddim, 20 steps)")
    print(header)
    checkpoints = sorted({steps // 4, steps // 2, steps})
    start = time.perf_counter()

    class Checkpoints(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 in checkpoints:
                seconds = time.perf_counter() - start
                row(f"after {batch + 1} steps ({seconds:.0f} s)", *measure(diffusion_steps=20))

    row("after 0 steps", *measure(diffusion_steps=20))
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Checkpoints()])

    solution = model.generate(len(real), REFERENCE_STEPS, seed=args.seed)
    print(f"\nKID per sampler after {steps} steps (network evaluations = steps); distance:")
    print(f"mean |image - image of {REFERENCE_STEPS} ddim steps from the same noise|")
    print(header + f"{'distance':>10}")
    samplers = [
        ("ddim, 20 steps (the book's)", dict(diffusion_steps=20)),
        ("ddim, 10 steps", dict(diffusion_steps=10)),
        ("ddim, 5 steps", dict(diffusion_steps=5)),
        ("ddim, 40 steps", dict(diffusion_steps=40)),
        ("ddim eta=1, 20 steps", dict(diffusion_steps=20, eta=1.0)),
        ("ddim eta=1, 40 steps", dict(diffusion_steps=40, eta=1.0)),
        ("dpmpp_2m, 10 steps", dict(diffusion_steps=10, sampler="dpmpp_2m")),
        ("dpmpp_2m, 5 steps", dict(diffusion_steps=5, sampler="dpmpp_2m")),
        ("dpmpp_2m, 20 steps", dict(diffusion_steps=20, sampler="dpmpp_2m")),
        # The same samplers with the steps spaced equally in log-SNR.
        ("ddim, 20 steps, log_snr", dict(diffusion_steps=20, spacing="log_snr")),
        ("ddim, 10 steps, log_snr", dict(diffusion_steps=10, spacing="log_snr")),
        ("ddim, 5 steps, log_snr", dict(diffusion_steps=5, spacing="log_snr")),
        ("ddim eta=1, 20 steps, log_snr", dict(diffusion_steps=20, eta=1.0, spacing="log_snr")),
        (
            "dpmpp_2m, 10 steps, log_snr",
            dict(diffusion_steps=10, sampler="dpmpp_2m", spacing="log_snr"),
        ),
        (
            "dpmpp_2m, 5 steps, log_snr",
            dict(diffusion_steps=5, sampler="dpmpp_2m", spacing="log_snr"),
        ),
    ]
    for label, sampling in samplers:
        row(label, *measure(solution, **sampling))


if __name__ == "__main__":
    main()
