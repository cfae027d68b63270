"""Generate images with a trained model: `python generate.py RUN_DIR/model.keras`."""

import os

os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")  # before TensorFlow loads

from diffusion_keras.cli import (
    OneLineParser,
    UsageError,
    closed_unit_interval,
    int_list,
    non_negative_float,
    positive_int,
    run,
)


def parser():
    from diffusion_keras.samplers import SAMPLING_RECIPES

    default = SAMPLING_RECIPES["default"]
    p = OneLineParser(description="Generate images with a trained diffusion model.")
    add = p.add_argument
    add("model", help="a model file saved by train.py (RUN_DIR/model.keras)")
    add("--output", default="generated.png", help="PNG grid to write (default generated.png)")
    add("--output-dir", help="also write one PNG per image into this folder")
    add(
        "--num-images",
        type=positive_int,
        default=10,
        help="images (per row with --show-steps; default 10)",
    )
    add(
        "--recipe",
        choices=["default", "book"],
        default="default",
        help="sampling defaults: the measured fastest (default: {sampler}, {diffusion_steps} "
        "{spacing} steps) or the book's (book: ddim, 20 uniform steps); --sampler, --steps and "
        "--spacing still win".format(**default),
    )
    steps = default["diffusion_steps"]
    add("--steps", type=positive_int, default=None, help=f"diffusion steps (default {steps})")
    add("--seed", type=int, default=None, help="same seed, same images (default: random)")
    add(
        "--columns", type=positive_int, default=None, help="images per row of the grid (default 10)"
    )
    add("--batch-size", type=positive_int, default=64, help="images denoised at once (default 64)")
    add(
        "--interpolate",
        action="store_true",
        help="rows of spherical interpolations between two noises, as in the book",
    )
    add("--rows", type=positive_int, default=5, help="rows for --interpolate (default 5)")
    add(
        "--interpolation-points",
        type=positive_int,
        default=11,
        help="images per --interpolate row (default 11)",
    )
    add(
        "--show-steps",
        type=int_list,
        default=None,
        help="comma-separated step counts: the same noise denoised with each, one row each",
    )
    add("--sampler", choices=["ddim", "dpmpp_2m"], default=None,
        help=f"ddim (the book's) or dpmpp_2m (second order; default {default['sampler']})",
    )  # fmt: skip
    add("--spacing", choices=["uniform", "log_snr"], default=None,
        help="where the steps fall: uniform in time (the book's) or in log-SNR "
             f"(better images in few steps; default {default['spacing']})")  # fmt: skip
    add("--eta", type=closed_unit_interval, default=0.0,
        help="ddim only: fresh noise per step, 0 (deterministic) to 1 (DDPM-like)")  # fmt: skip
    add("--class", dest="class_label", metavar="NAME|INDEX",
        help="generate this class: a conditional model's, or the classifier's")  # fmt: skip
    add("--guidance-scale", type=non_negative_float, default=1.0,
        help="classifier-free guidance weight: 1 conditional (default), 0 unconditional, "
        "more pushes harder to the class")  # fmt: skip
    add("--classifier", help="a classifier saved by train.py --train-classifier "
        "(default with --classifier-scale: classifier.keras beside the model)")  # fmt: skip
    add("--classifier-scale", type=non_negative_float, default=None,
        help="classifier guidance strength (default 1 when --classifier is given)")  # fmt: skip
    add(
        "--precision",
        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        default="auto",
        help="numeric precision for sampling (default auto: see the README)",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    return p


def classifier_guidance(args, model):
    """The classifier and its scale from the flags, as `generate` arguments."""
    path = args.classifier
    if path is None and args.classifier_scale is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(args.model)), "classifier.keras")
        if not os.path.exists(path):
            raise UsageError(
                f"--classifier-scale: no classifier.keras beside {args.model}; train one with "
                "train.py --train-classifier or pass --classifier PATH"
            )
    if path is None:
        if args.class_label is not None and not model.num_classes:
            raise UsageError(
                "--class: this model is not class-conditional; steer it with a classifier "
                "(--classifier-scale S, see train.py --train-classifier)"
            )
        return {}
    from diffusion_keras.saving import load_classifier

    if args.class_label is None:
        raise UsageError("classifier guidance needs --class NAME|INDEX")
    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    return {"classifier": load_classifier(path), "classifier_scale": scale}


def main(argv=None):
    args = parser().parse_args(argv)
    import numpy as np

    from diffusion_keras.images import save_grid, save_images, spherical_interpolation
    from diffusion_keras.samplers import sampling_settings
    from diffusion_keras.saving import load_model

    # --eta is DDIM's: it picks DDIM unless another sampler is asked for.
    sampler = args.sampler or ("ddim" if args.eta else None)
    sampling = sampling_settings(
        args.recipe, sampler=sampler, diffusion_steps=args.steps, spacing=args.spacing
    )
    model = load_model(args.model, compile=False, precision=args.precision)
    progress = not args.no_progress
    generate = dict(
        **sampling, batch_size=args.batch_size, progress=progress, eta=args.eta, seed=args.seed,
        class_labels=args.class_label,
        guidance_scale=args.guidance_scale, **classifier_guidance(args, model),
    )  # fmt: skip
    if args.interpolate:
        rng = np.random.default_rng(args.seed)
        fractions = np.linspace(0.0, 1.0, args.interpolation_points)
        noises = []
        for _ in range(args.rows):
            a, b = model.make_noise(2, rng.integers(2**63))
            noises.append(spherical_interpolation(a, b, fractions))
        images = model.generate(initial_noise=np.concatenate(noises), **generate)
        columns = args.interpolation_points
    elif args.show_steps:
        noise = model.make_noise(args.num_images, args.seed)
        rows = []
        for steps in args.show_steps:
            generate["diffusion_steps"] = steps
            rows.append(model.generate(initial_noise=noise, **generate))
        images = np.concatenate(rows)
        columns = args.num_images
    else:
        images = model.generate(args.num_images, **generate)
        columns = args.columns or min(args.num_images, 10)
    save_grid(images, args.output, columns=columns)
    print(f"wrote {len(images)} images to {args.output}")
    if args.output_dir:
        save_images(images, args.output_dir)
        print(f"wrote {len(images)} PNG files to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
