"""How saturated a model's samples are against real images: the colour spread.

    python bench/colour_spread.py runs/race/glyphs_default.keras --dataset glyphs
    python bench/colour_spread.py A.keras B.keras --dataset flowers

For each 32x32 model trained by `bench/quality.py` (or `train.py`) and for
each of four samplers, samples 256 images from the same seeded noise and
prints their KID against 256 held-out images (random and trained features, as
`bench/steps.py`) and their colour spread: the standard deviation of each
image's mean colour over its three channels, averaged over the images (0 for
grey, larger for saturated). The held-out images' own spread is printed
first. A model that regresses to the mean colour gives washed-out samples
(a smaller spread than the data's); one that overshoots, over-saturated ones.
Run by hand, never by CI.
"""

import argparse
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SAMPLERS = [
    ("ddim, 20 steps", dict(diffusion_steps=20)),
    ("ddim eta 1, 20 steps", dict(diffusion_steps=20, eta=1.0)),
    ("ddim, 100 steps", dict(diffusion_steps=100)),
    ("dpmpp_2m, 10 log-SNR steps", dict(diffusion_steps=10, sampler="dpmpp_2m", spacing="log_snr")),
]


def colour_spread(images):
    """Mean over images of the standard deviation of their mean colour's channels."""
    import numpy as np

    means = np.asarray(images, np.float64).reshape(len(images), -1, images.shape[-1]).mean(1)
    return float(means.std(axis=1).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model files trained at 32x32")
    parser.add_argument("--dataset", default="glyphs", choices=["flowers", "glyphs"])
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    from quality import bench_features, kid_between, load, package_first

    package_first()
    from diffusion_keras.models.saving import load_model

    _, held_out = load(args.dataset, 32, args.held_out, args.seed)
    real = held_out.images.astype(np.float32) / 255.0
    features = {name: bench_features(name, args.dataset, 32) for name in ("random", "trained")}
    print(f"{args.dataset}: held-out images' colour spread {colour_spread(real):.3f}")
    for path in args.models:
        model = load_model(path, compile=False)
        for label, sampling in SAMPLERS:
            images = model.generate(len(real), seed=args.seed, **sampling)
            kids = {name: kid_between(f, real, images) for name, f in features.items()}
            print(f"{os.path.basename(path)}, {label}: KID random {kids['random']:.4f}, trained "
                  f"{kids['trained']:.3f}; colour spread {colour_spread(images):.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
