"""Latent against pixel diffusion at 128x128 on the same CPU budget: KID against CPU minutes.

    python bench/autoencoder.py --crop 64 --save runs/ae128.keras   # the autoencoder, first
    python bench/latent_race.py --autoencoder runs/ae128.keras --autoencoder-minutes 60

Trains the default recipe with the book's U-Net widths on `builtin:flowers` at
`--image-size` twice, each in a fresh process until that process has used
`--budget` CPU minutes (user + system time of all its threads): in pixel space,
and in the latent space of `--autoencoder` (its scaled latents encoded once
before training, as `train.py --latent` does, the encoding counted in the
budget). KID against held-out images (random features at the image size,
comparable only with each other) is measured at `--marks` points with
`generate.py`'s default sampler from the same seeded noise, its cost not
counted. The autoencoder's own training is a cost the latent run pays once:
with `--autoencoder-minutes` (the CPU minutes `bench/autoencoder.py` printed)
the plot also draws the latent curve shifted by it. Prints the curves and
writes `--plot`: KID against CPU minutes, and each run's last samples. Run by
hand, never by CI.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SPACES = ("pixel", "latent")


def worker(args):
    """Trains one space for the budget; prints one JSON line."""
    import diffusion_keras  # noqa: F401, I001  (its CPU-kernel choice, before TensorFlow)
    import numpy as np
    from quality import cpu_seconds, kid_between, race_callback

    from diffusion_keras.data.datasets import load_images, split_held_out, train_dataset
    from diffusion_keras.metrics.kid import feature_extractor
    from diffusion_keras.training.precise_bn import PreciseBatchNorm
    from diffusion_keras.sampling.rules import SAMPLING_RECIPES
    from diffusion_keras.models.saving import load_autoencoder
    from diffusion_keras.training.run import TrainConfig, build_model

    data, held_out = split_held_out(
        load_images("builtin:flowers", args.image_size), args.held_out, args.seed
    )
    real = held_out.images.astype(np.float32) / 255.0
    extractor = feature_extractor("random", args.image_size)
    latent = args.space == "latent"
    config = TrainConfig.for_recipe(
        "default", image_size=args.image_size, seed=args.seed, latent=latent,
        autoencoder=args.autoencoder if latent else "",
    )  # fmt: skip
    autoencoder = load_autoencoder(args.autoencoder) if latent else None
    model = build_model(config, total_steps=10**6, autoencoder=autoencoder)
    start = cpu_seconds()  # the clock starts here: loading the data is the same for both
    if latent:
        data = dataclasses.replace(data, images=model.encode_images(data.images, 64))
    model.adapt(data.images if latent else data.images.astype(np.float32) / 255.0)
    dataset = train_dataset(data, config.batch_size, 1, seed=args.seed)
    precise = PreciseBatchNorm(data, config.precise_bn_batches, config.batch_size, args.seed)
    precise.set_model(model)
    sampling = dict(SAMPLING_RECIPES["default"])
    budget = args.budget * 60.0
    marks = [budget * (k + 1) / args.marks for k in range(args.marks)]

    def sample():
        images = model.generate(len(real), seed=args.seed, **sampling)
        return images, kid_between(extractor, real, images)

    race = race_callback(args.space, marks, start, precise.on_epoch_end, sample)
    model.fit(dataset, steps_per_epoch=10**7, epochs=1, verbose=0, callbacks=[race], shuffle=False)
    np.save(args.samples, race.images[:8])
    result = dict(space=args.space, curve=race.curve, sample_shape=list(model.sample_shape))
    print(json.dumps(result))


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure = plt.figure(figsize=(11, 4.2))
    axis = figure.add_axes([0.09, 0.13, 0.4, 0.8])
    for space in SPACES:
        minutes = [c[0] for c in results[space]["curve"]]
        kids = [c[2] for c in results[space]["curve"]]
        (line,) = axis.plot(minutes, kids, marker="o", label=f"{space} space")
        if space == "latent" and args.autoencoder_minutes:
            shifted = [m + args.autoencoder_minutes for m in minutes]
            axis.plot(shifted, kids, marker="o", linestyle="--", color=line.get_color(),
                      label="latent, the autoencoder's training counted")  # fmt: skip
    axis.set_yscale("log")
    axis.set_xlabel("CPU minutes of training")
    axis.set_ylabel("KID (random features)")
    axis.set_title(f"builtin:flowers at {args.image_size}x{args.image_size}")
    axis.legend(fontsize=8)
    for row, space in enumerate(SPACES):
        samples = np.load(os.path.join(args.save_dir, f"{space}.samples.npy"))
        minutes, steps, kid = results[space]["curve"][-1]
        image_axis = figure.add_axes([0.53, 0.52 - 0.46 * row, 0.45, 0.4])
        image_axis.imshow(np.clip(np.concatenate(list(samples[:4]), axis=1), 0, 1))
        image_axis.set_axis_off()
        image_axis.set_title(f"{space}: {minutes:.0f} CPU min ({steps} steps), KID {kid:.3f}",
                             fontsize=9)  # fmt: skip
    figure.savefig(args.plot, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder", required=True, help="an Autoencoder .keras file")
    parser.add_argument("--autoencoder-minutes", type=float, default=0.0,
                        help="CPU minutes the autoencoder's training took")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--budget", type=float, default=20.0, help="CPU minutes a space")
    parser.add_argument("--marks", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="runs/latent_race")
    parser.add_argument("--plot", default="docs/latent_vs_pixel.png")
    parser.add_argument("--reuse", action="store_true", help="take results kept in --save-dir")
    parser.add_argument("--spaces", default="pixel,latent",
                        help="train only these now, take the others' kept results")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--space", choices=SPACES, help=argparse.SUPPRESS)
    parser.add_argument("--samples", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not os.path.exists(args.autoencoder):
        raise SystemExit(f"--autoencoder {args.autoencoder}: no such file")
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}")
    os.makedirs(args.save_dir, exist_ok=True)
    results = {}
    for space in SPACES:
        saved = os.path.join(args.save_dir, f"{space}.json")
        wanted = space in args.spaces.split(",")
        if os.path.exists(saved) and (args.reuse or not wanted):
            with open(saved) as handle:
                results[space] = json.load(handle)
        if space in results or not wanted:
            continue
        command = [
            sys.executable, __file__, "--worker", "--space", space, "--autoencoder",
            args.autoencoder, "--image-size", str(args.image_size), "--budget", str(args.budget),
            "--marks", str(args.marks), "--held-out", str(args.held_out), "--seed",
            str(args.seed), "--samples", os.path.join(args.save_dir, f"{space}.samples.npy"),
        ]  # fmt: skip
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1")
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"worker failed: {' '.join(command)}")
        results[space] = json.loads(done.stdout.strip().splitlines()[-1])
        with open(saved, "w") as handle:
            json.dump(results[space], handle)
    if set(results) != set(SPACES):
        return print(f"trained {', '.join(results)}; the rest later, with --reuse")
    for space in SPACES:
        shape = "x".join(map(str, results[space]["sample_shape"]))
        curve = results[space]["curve"]
        points = ", ".join(f"{m:.1f} min ({s} steps) {k:.4f}" for m, s, k in curve)
        print(f"{space:<7} on {shape}: KID at {points}")
    if args.autoencoder_minutes:
        print(f"(the autoencoder's training: {args.autoencoder_minutes:.1f} CPU min, once)")
    plot(results, args)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
