"""Latent against pixel diffusion at 128x128: sampling cost per image, decoder included.

    python bench/latent.py                       # 128x128, f=4, book widths, 20 steps
    python bench/latent.py --image-size 64 --factor 8

Builds the book's U-Net (widths 32, 64, 96, 128) twice: in pixel space at
`--image-size` and in the latent space of an `Autoencoder` with downsampling
`--factor` (32x32x4 latents at 128x128 and f=4), and times `generate` for
`--images` images with `--steps` DDIM steps, the latent model's decoding
included, alternating the two `--repeats` times (the machine is noisy; the
ratio of medians is printed). Weights are untrained: cost does not depend on
them. Also prints the FLOPs of one U-Net evaluation and of one decoding from
TensorFlow's profiler. Run by hand, never by CI.
"""

import argparse
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def forward_flops(model, shape):
    """FLOPs of one call of the functional `model` on one input of `shape`."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    specs = [tf.TensorSpec((1, *s), tf.float32) for s in shape]
    function = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False))
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(*specs))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    graph = frozen.graph
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--factor", type=int, default=4, choices=[4, 8])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    import diffusion_keras as dk

    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}")
    size = args.image_size
    autoencoder = dk.Autoencoder(factor=args.factor)
    pixel = dk.DiffusionModel(image_size=size, seed=0)
    latent = dk.DiffusionModel(image_size=size, seed=0, autoencoder=autoencoder)
    rng = np.random.default_rng(0)
    pixel.adapt(rng.uniform(size=(8, size, size, 3)).astype(np.float32))
    latent.adapt(rng.uniform(size=(8, size, size, 3)).astype(np.float32))
    print(f"pixel U-Net on {pixel.sample_shape}: {pixel.network.count_params():,} weights")
    print(f"latent U-Net on {latent.sample_shape}: {latent.network.count_params():,} weights; "
          f"decoder {autoencoder.decoder.count_params():,}")  # fmt: skip
    pixel_flops = forward_flops(pixel.network, [pixel.sample_shape, (1, 1, 1)])
    latent_flops = forward_flops(latent.network, [latent.sample_shape, (1, 1, 1)])
    decoder_flops = forward_flops(autoencoder.decoder, [latent.sample_shape])
    per_image = {
        "pixel": args.steps * pixel_flops,
        "latent": args.steps * latent_flops + decoder_flops,
    }
    print(f"GFLOP per image, {args.steps} steps: pixel {per_image['pixel'] / 1e9:.1f}; latent "
          f"{args.steps * latent_flops / 1e9:.1f} + decoder {decoder_flops / 1e9:.1f} = "
          f"{per_image['latent'] / 1e9:.1f} ({per_image['latent'] / per_image['pixel']:.3f} "
          f"of pixel)")  # fmt: skip
    times = {"pixel": [], "latent": []}
    for model in (pixel, latent):  # trace once, untimed
        model.generate(2, 2, seed=0)
    for _ in range(args.repeats):
        for name, model in (("pixel", pixel), ("latent", latent)):
            start = time.perf_counter()
            model.generate(args.images, args.steps, seed=0)
            times[name].append((time.perf_counter() - start) / args.images)
    for name, values in times.items():
        print(f"{name:<7} {statistics.median(values):.3f} s per image "
              f"({', '.join(f'{v:.3f}' for v in values)})")  # fmt: skip
    ratio = statistics.median(times["latent"]) / statistics.median(times["pixel"])
    print(f"latent / pixel sampling time per image: {ratio:.3f} (target <= 0.333)")


if __name__ == "__main__":
    main()
