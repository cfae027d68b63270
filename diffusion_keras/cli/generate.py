"""`generate.py` (and the `diffusion-keras-generate` command): images from a trained model.

`python generate.py RUN_DIR/model.keras`. The arguments are parsed before
TensorFlow is imported, so `--help`, `--version` and argument errors answer at once.
"""

import argparse
import os
import sys

import numpy as np

from diffusion_keras.cli.common import (
    OneLineParser,
    UsageError,
    closed_unit_interval,
    int_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    strength,
)
from diffusion_keras.config.choices import PRECISIONS, SAMPLERS, SPACINGS
from diffusion_keras.config.sampling import (
    LONG_RUN_STEPS,
    SAMPLING_RECIPES,
    STUDENT_ETA,
    default_recipe,
    sampling_settings,
    spacing_for,
)
from diffusion_keras.editing.files import image_paths_of, load_edit_images, load_masks
from diffusion_keras.utils.images import save_grid, save_images, spherical_interpolation
from diffusion_keras.utils.quiet import configured_backend, import_tensorflow

# The default guidance for --prompt: prompt following on the flowers' captions
# peaked at 4-5 and fell at 7 and 10 (bench/prompts.py; docs/results/text-to-image.md).
PROMPT_GUIDANCE = 5.0


def parser():
    default = SAMPLING_RECIPES["default"]
    p = OneLineParser(
        description="Generate images with a trained diffusion model."
    )
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
        choices=list(SAMPLING_RECIPES),
        default=None,
        help="sampling defaults: the measured best (default: {sampler}, {diffusion_steps} "
        "{spacing} steps, eta {eta}), EDM's (edm: heun, 5 karras steps, eta 1: 9 network "
        "evaluations; the measured best, and so the default, for a model trained "
        f"{LONG_RUN_STEPS} steps or more), the book's (book: ddim, 20 uniform steps) or the "
        "one for masks (inpaint: ddim, 20 uniform steps, eta 1; the default with "
        "--mask); --sampler, "
        "--steps, --spacing and --eta still win; a distilled student's default is its own DDIM "
        f"steps with eta {STUDENT_ETA:g}".format(**default),
    )
    steps = default["diffusion_steps"]
    add("--steps", type=positive_int, default=None,
        help=f"diffusion steps (default {steps}; a student's own)")  # fmt: skip
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
    add("--sampler", choices=SAMPLERS, default=None,
        help=f"ddim (the book's), dpmpp_2m (second order; default {default['sampler']}) or "
        "heun (EDM's: second order, 2 x steps - 1 network evaluations, on karras spacing "
        "unless --spacing is given)",
    )  # fmt: skip
    add("--spacing", choices=SPACINGS, default=None,
        help="where the steps fall: uniform in time (the book's), in log-SNR "
             "(better images in few steps) or karras (EDM's, equal in sigma^(1/7)); default "
             f"{default['spacing']}")  # fmt: skip
    add("--eta", type=closed_unit_interval, default=None,
        help="fresh noise per step, 0 (deterministic) to 1 (ddim: DDPM's ancestral "
        "sampling; dpmpp_2m: SDE-DPM-Solver++(2M); heun: the share of EDM's largest "
        "churn); default the recipe's (default: "
        f"{default.get('eta', 0.0)}; a student's: {STUDENT_ETA:g}); 0 with --interpolate, "
        "--show-steps and --init-image without --mask")  # fmt: skip
    add("--class", dest="class_label", metavar="NAME|INDEX",
        help="generate this class: a conditional model's, or the classifier's")  # fmt: skip
    add("--prompt", help="a text-conditional model's prompt (train.py --captions)")
    add("--negative-prompt",
        help="--prompt with --guidance-scale: steer away from this, not the empty prompt",
    )  # fmt: skip
    add("--guidance-scale", type=non_negative_float, default=None,
        help="classifier-free guidance weight: 1 conditional, 0 unconditional, more pushes "
        f"harder to the class or prompt (default {PROMPT_GUIDANCE:g} with --prompt, "
        "as measured by bench/prompts.py; else 1)")  # fmt: skip
    add("--classifier", help="a classifier saved by train.py --train-classifier "
        "(default with --classifier-scale: classifier.keras beside the model)")  # fmt: skip
    add("--classifier-scale", type=non_negative_float, default=None,
        help="classifier guidance strength (default 1 when --classifier is given)")  # fmt: skip
    add(
        "--precision",
        choices=("auto",) + PRECISIONS,
        default="auto",
        help="numeric precision for sampling (default auto: docs/guides/precision.md)",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    add("--export", metavar="DIR",
        help="write a TensorFlow SavedModel into DIR (a new folder) instead of images: its "
             "signature generate(seed, num_images) gives the uint8 images this command writes "
             "for --seed and --num-images, with this command's sampling (and --sampler, --steps, "
             "--spacing, --eta, --precision) baked in; a class-conditional model also gets "
             "generate_class(seed, num_images, class_index, guidance_scale), a text model "
             "generate_prompt(seed, num_images, prompt, negative_prompt, guidance_scale), a "
             "pixel model image_to_image(seed, init_image, strength) and inpaint(seed, "
             "init_image, mask, strength), sampled as --init-image and --mask sample "
             "(docs/guides/export.md)")  # fmt: skip
    add("--litert", action="store_true",
        help="--export: also DIR/generate.tflite, the sampling loop from given noise in "
             "LiteRT's built-in ops (DIR/noise.py draws a seed's noise); float32 unless "
             "--precision says otherwise")  # fmt: skip
    add("--onnx", action="store_true",
        help="--export: also DIR/generate.onnx (the loop from given noise) and DIR/unet.onnx "
             "(the network); needs pip install -e .[export]")  # fmt: skip
    edit = p.add_argument_group(
        'editing existing images (image-to-image, inpainting, denoising; docs/guides/editing.md)'
    )
    edit.add_argument("--init-image", metavar="PATH|FOLDER",
        help="edit this image (or every image below this folder) instead of sampling from "
             "noise; resized (and --center-crop'ed) like training images")  # fmt: skip
    edit.add_argument("--strength", type=strength, default=None,
        help="image-to-image: how far towards noise the image goes first, in (0, 1]: near 0 "
             "keeps it, 1 ignores it (default 1 with --mask)")  # fmt: skip
    edit.add_argument("--mask", metavar="PATH|FOLDER",
        help="inpainting: a black-and-white image the size of the input, white = regenerate "
             "(a folder: one mask per input, same file name)")  # fmt: skip
    edit.add_argument("--resample", type=positive_int, default=1,
        help="inpainting: take each step R times (RePaint's resampling; R times the cost)",
    )  # fmt: skip
    edit.add_argument("--harmonize", type=non_negative_int, default=None, metavar="N",
        help="inpainting: sweeps per step that carry the estimate's error at the mask's border "
             "into the hole, so that it meets the kept pixels without a seam (default 16; 0: "
             "off)")  # fmt: skip
    edit.add_argument("--noise-level", type=positive_float, default=None, metavar="SIGMA",
        help="denoising: the input's Gaussian noise, standard deviation in 0-255 pixel "
             "values (--steps 1: the single-step estimate)")  # fmt: skip
    edit.add_argument("--variations", type=positive_int, default=1,
        help="outputs per input image, each from its own noise (default 1)")  # fmt: skip
    edit.add_argument("--center-crop", action="store_true",
        help="crop inputs (and masks) to a centred square before resizing, as train.py does",
    )  # fmt: skip
    return p


def prompting(args, model):
    """The prompt flags as `generate` arguments, checked against the model."""
    if args.prompt is None and args.negative_prompt is None:
        return {}
    if model.text_encoder is None:
        raise UsageError(
            "--prompt: this model is not text-conditional; train one with train.py --captions"
        )
    if args.prompt is None:
        raise UsageError("--negative-prompt needs a --prompt")
    if args.negative_prompt is not None and guidance_scale(args) == 1.0:
        raise UsageError(
            "--negative-prompt acts through guidance; give --guidance-scale other than 1"
        )
    return dict(prompts=args.prompt, negative_prompts=args.negative_prompt)


def guidance_scale(args):
    """`--guidance-scale`, or its default: `PROMPT_GUIDANCE` for a prompt,
    else 1 (the conditional model)."""
    if args.guidance_scale is not None:
        return args.guidance_scale
    return PROMPT_GUIDANCE if args.prompt is not None else 1.0


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
    from diffusion_keras.models.saving import load_classifier

    if args.class_label is None:
        raise UsageError("classifier guidance needs --class NAME|INDEX")
    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    return {"classifier": load_classifier(path), "classifier_scale": scale}


def trained_steps(model):
    """How many steps `model` trained (0 where it does not say)."""
    from keras import ops

    steps = getattr(model, "train_steps", None)
    return 0 if steps is None else int(ops.convert_to_numpy(steps))


def sampling_arguments(args, student_defaults=None, train_steps=0):
    """Sampler, steps, spacing and eta from --recipe and the flags that win over it.

    A distilled student's own sampling (`student_defaults`, its
    `sampling_defaults()`) takes the place of the default recipe; so does
    `edm` for a model trained `train_steps` >= `LONG_RUN_STEPS`
    (`config.sampling.default_recipe`)."""

    recipe = args.recipe or ("inpaint" if args.mask else default_recipe(train_steps))
    given = dict(sampler=args.sampler, diffusion_steps=args.steps, spacing=args.spacing)
    # Interpolations and step rows show where one noise leads, and
    # image-to-image and denoising keep to their image: a deterministic path
    # there, unless --eta asks for fresh noise (inpainting's recipe has its own).
    deterministic = args.interpolate or args.show_steps or args.init_image
    if student_defaults and args.recipe is None and not args.mask:
        settings = dict(student_defaults)
        settings["spacing"] = spacing_for(args.sampler, args.spacing, settings)
        settings.update({name: value for name, value in given.items() if value is not None})
        # The student's eta goes with its own sampler (`STUDENT_ETA`).
        eta = student_defaults["eta"] if settings["sampler"] == student_defaults["sampler"] else 0.0
        settings["eta"] = (0.0 if deterministic else eta) if args.eta is None else args.eta
        return settings
    settings = sampling_settings(recipe, **given)
    # The recipe's eta goes with the recipe's sampler, not with another one.
    recipes_sampler = sampling_settings(recipe)["sampler"]
    eta = settings.pop("eta", 0.0) if settings["sampler"] == recipes_sampler else 0.0
    if args.interpolate or args.show_steps or (args.init_image and recipe in ("default", "edm")):
        eta = 0.0
    settings["eta"] = eta if args.eta is None else args.eta
    return settings


# Flags that say what to generate now, which an export leaves to its inputs.
NOT_WITH_EXPORT = ("init_image", "interpolate", "show_steps", "class_label", "prompt",
                   "negative_prompt", "guidance_scale", "classifier", "classifier_scale",
                   "output_dir", "seed")  # fmt: skip


def check_export_flags(args):
    if not args.export:
        if args.litert or args.onnx:
            raise UsageError(f"--{'litert' if args.litert else 'onnx'} goes with --export DIR")
        return
    given = [name for name in NOT_WITH_EXPORT if getattr(args, name) not in (None, False)]
    if given:
        flag = "--" + given[0].replace("_", "-").replace("class-label", "class")
        raise UsageError(f"{flag} does not combine with --export: the exported signatures take "
                         "the seed, the class and the guidance as inputs (docs/guides/export.md)")
    if os.path.exists(args.export):
        raise UsageError(f"--export: {args.export} exists; choose a new folder")
    if configured_backend() != "tensorflow":
        raise UsageError("--export writes a TensorFlow SavedModel: run it with "
                         f"KERAS_BACKEND=tensorflow (this process runs on {configured_backend()})")


def export(args, model, settings, student=None, train_steps=0):
    from diffusion_keras.export import export_saved_model

    # The edit signatures sample as generate.py edits: --init-image, and --mask too.
    edits = {name: sampling_arguments(argparse.Namespace(**{**vars(args), "init_image": "IMAGE",
                                                            "mask": mask}), student,
                                    train_steps)
             for name, mask in (("image_to_image", None), ("inpaint", "MASK"))}  # fmt: skip
    names = export_saved_model(model, args.export, litert=args.litert, onnx=args.onnx,
                               **settings, **edits)  # fmt: skip
    baked = (f"{settings['sampler']}, {settings['diffusion_steps']} {settings['spacing']} steps, "
             f"eta {settings['eta']:g}")  # fmt: skip
    files = [f for f in ("generate.tflite", "generate.onnx", "unet.onnx")
             if os.path.exists(os.path.join(args.export, f))]  # fmt: skip
    print(f"exported {args.model} to {args.export} ({baked}; {model.dtype_policy.name}): "
          f"signatures {', '.join(names)}" + (f"; also {', '.join(files)}" if files else ""))
    return 0


def check_edit_flags(args):
    given = [f for f, v in (("--strength", args.strength), ("--mask", args.mask),
             ("--noise-level", args.noise_level)) if v is not None]  # fmt: skip
    if args.init_image is None:
        extra = given + ["--resample"] * (args.resample != 1)
        extra += ["--harmonize"] * (args.harmonize is not None)
        extra += ["--variations"] * (args.variations != 1)
        if extra:
            raise UsageError(f"{extra[0]} edits an image: give it with --init-image PATH|FOLDER")
        return
    if not given:
        raise UsageError(
            "--init-image: say what to do with it: --strength S (image-to-image), --mask PATH "
            "(inpainting) or --noise-level SIGMA (denoising)"
        )
    if args.mask is None and (args.resample != 1 or args.harmonize is not None):
        flag = "--resample" if args.resample != 1 else "--harmonize"
        raise UsageError(f"{flag} is for inpainting: give a --mask")
    if args.noise_level is not None and len(given) > 1:
        raise UsageError("--noise-level denoises the whole image: give no --strength or --mask")
    if args.interpolate or args.show_steps:
        raise UsageError("--init-image does not combine with --interpolate or --show-steps")


def edit_images(args, model, settings):
    """The --init-image path: returns `(images for the grid, columns, outputs, names)`."""

    paths = image_paths_of(args.init_image)
    images, sizes = load_edit_images(paths, model.image_size, args.center_crop)
    if model.channels == 1:
        images = images.mean(axis=-1, keepdims=True)  # a grayscale model takes the luminance
    masks = None
    if args.mask is not None:
        masks = load_masks(args.mask, paths, sizes, model.image_size, args.center_crop)
    copies = args.variations
    outputs = model.edit(
        np.repeat(images, copies, axis=0),
        strength=args.strength,
        mask=None if masks is None else np.repeat(masks, copies, axis=0),
        noise_level=None if args.noise_level is None else args.noise_level / 255.0,
        resample=args.resample,
        harmonize=args.harmonize,
        **settings,
    )
    shown = images if masks is None else images * (1.0 - masks[..., None]) + masks[..., None]
    rows = [np.concatenate([shown[i : i + 1], outputs[i * copies : (i + 1) * copies]])
            for i in range(len(images))]  # fmt: skip
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if copies > 1:
        names = [f"{name}_{k}" for name in names for k in range(copies)]
    return np.concatenate(rows), 1 + copies, outputs, names


def main(argv=None):
    args = parser().parse_args(argv)
    check_export_flags(args)
    check_edit_flags(args)
    # From here on TensorFlow loads (quietly: its C++ start-up lines go to /dev/null).
    import_tensorflow()
    from diffusion_keras.models.saving import load_model

    precision = args.precision
    if args.export and (args.litert or args.onnx) and precision == "auto":
        precision = "float32"  # LiteRT and ONNX have no bfloat16 convolutions
    model = load_model(args.model, compile=False, precision=precision)
    student = model.sampling_defaults() if getattr(model, "student_steps", 0) else None
    train_steps = trained_steps(model)
    settings = sampling_arguments(args, student, train_steps)
    if args.export:
        return export(args, model, settings, student, train_steps)
    # A progress bar only at a terminal: in a file its frames are noise.
    progress = not args.no_progress and sys.stdout.isatty()
    generate = dict(
        **settings, batch_size=args.batch_size, progress=progress, seed=args.seed,
        class_labels=args.class_label, **prompting(args, model),
        guidance_scale=guidance_scale(args), **classifier_guidance(args, model),
    )  # fmt: skip
    outputs, names = None, None
    if args.init_image is not None:
        images, columns, outputs, names = edit_images(args, model, generate)
    elif args.interpolate:
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
        outputs = images if outputs is None else outputs
        if names is None:
            save_images(outputs, args.output_dir)
        else:
            save_named_images(outputs, names, args.output_dir)
        print(f"wrote {len(outputs)} PNG files to {args.output_dir}")
    return 0


def save_named_images(images, names, directory):

    for image, name in zip(images, names):
        save_grid(image[None], os.path.join(directory, f"{name}.png"), padding=0)


def entry(argv=None):
    """The program."""
    os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")  # before TensorFlow loads
    return run(main, argv)
