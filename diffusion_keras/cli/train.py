"""`train.py` (and the `diffusion-keras-train` command): train a diffusion model.

The flags are derived from `TrainConfig`'s groups (`diffusion_keras.config.run`):
each setting's name, default, choices and help are written there once. The
arguments are parsed before TensorFlow is imported, so `--help`, `--version`
and argument errors answer at once.
"""

import json
import os
import signal
import sys

from diffusion_keras.cli.common import OneLineParser, UsageError, run
from diffusion_keras.config import fields
from diffusion_keras.config.choices import RECIPE_NAMES
from diffusion_keras.config.run import GROUPS, RESUMABLE, TrainConfig, run_paths
from diffusion_keras.data.datasets import load_images
from diffusion_keras.training.distribute import make_strategy, worker_index
from diffusion_keras.training.preemption import EXIT_PREEMPTED, stop_signal
from diffusion_keras.training.run_files import claim_run_directory
from diffusion_keras.utils.errors import Preempted
from diffusion_keras.utils.precision import resolve_precision
from diffusion_keras.utils.quiet import import_tensorflow


def parser():
    p = OneLineParser(
        description="Train a denoising diffusion model. Start with --data (your image folder) "
        "and --output; --recipe book is the book's training exactly. See the docs' flag "
        "reference for every setting.",
    )
    start = p.add_argument_group("start here")
    start.add_argument("--recipe", choices=RECIPE_NAMES,
                       help="training defaults: the package's (default) or the book's exactly "
                       "(book: its EMA without warm-up, no flips, uniform times, a constant "
                       "learning rate); flags given still win")  # fmt: skip
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --output from its last checkpoint")  # fmt: skip
    start.add_argument("--overwrite", action="store_true",
                       help="start a new run in an --output that holds one: the old run is "
                       "moved aside to <output>.old-<time>, never deleted")  # fmt: skip
    start.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None,
                       help="Keras verbosity (default: a progress bar)")  # fmt: skip
    for group in GROUPS:
        fields.add_flags(p, group)
    return p


def config_from_args(args):
    """The run's `TrainConfig`: the recipe's defaults and the flags given, or
    for `--resume` the saved run's config with the resumable flags changed."""
    given = fields.given_flags(args, TrainConfig)
    if given.get("autoencoder"):
        given["latent"] = True
    if given.get("text_encoder"):
        given["captions"] = True
    if not args.resume:
        return TrainConfig.for_recipe(args.recipe or "default", **given)
    if args.recipe is not None:
        raise UsageError("--resume: --recipe applies to new runs; the run keeps its settings")
    output = given.get("output", TrainConfig.output)
    config_path = run_paths(output)["config"]
    if not os.path.exists(config_path):
        raise UsageError(f"--resume: {config_path} not found; is {output!r} a run directory?")
    config = TrainConfig.load(config_path)
    # The run is the folder given, wherever it was first written: a run folder
    # moved or copied resumes where it is now, not at the path in its config.
    config.output = output
    for name, value in given.items():
        if name == "output":
            continue
        if name == "precision":
            value = resolve_precision(value)
        if name not in RESUMABLE and value != getattr(config, name):
            raise UsageError(
                f"--resume: --{name.replace('_', '-')} {value} differs from the run's "
                f"{getattr(config, name)}; only {', '.join(sorted(RESUMABLE))} may change"
            )
        setattr(config, name, value)
    return config


def is_chief():
    """Whether this process writes the run directory: not a multi-worker
    run's worker other than 0 (`TF_CONFIG`, or JAX's
    `KERAS_DISTRIBUTION_PROCESS_ID`)."""
    if os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0").strip() not in ("", "0"):
        return False
    try:
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    except ValueError:
        return True
    return int(task.get("index", 0)) == 0


def check_settings(config):
    """The settings that only make sense together, checked before any work."""
    from diffusion_keras.diffusion.schedules import validate_schedule
    from diffusion_keras.nn.unet import validate_attention, validate_unet_args
    from diffusion_keras.training.latent import training_crop

    validate_schedule(config.schedule, config.min_signal_rate, config.max_signal_rate)
    space_size = config.image_size
    if config.autoencoder and not os.path.isfile(config.autoencoder):
        raise UsageError(f"--autoencoder: {config.autoencoder} does not exist")
    if config.text_encoder and not os.path.isfile(config.text_encoder):
        raise UsageError(f"--text-encoder: {config.text_encoder} does not exist")
    if config.text_encoder_training == "joint" and not config.captions:
        raise UsageError("--text-encoder-training joint: a text encoder needs --captions")
    if config.captions and config.conditional:
        raise UsageError("--captions and --conditional: a model takes captions or classes")
    if config.captions and not config.attention_levels:
        raise UsageError(
            "--captions: the U-Net cross-attends to the caption; give --attention-levels (e.g. 2,3)"
        )
    if config.latent:
        if config.image_size % config.latent_factor:
            raise UsageError(
                f"--latent: --image-size {config.image_size} is not divisible by "
                f"--latent-factor {config.latent_factor}"
            )
        space_size //= config.latent_factor
        crop = config.autoencoder_crop  # not negative: the parser takes none
        if training_crop(crop, config.image_size, config.latent_factor) is None:
            raise UsageError(
                f"--autoencoder-crop {crop} is not divisible by --latent-factor "
                f"{config.latent_factor}"
            )
    validate_unet_args(
        space_size, config.widths, config.block_depth, embedding_dims=config.embedding_dims
    )
    validate_attention(
        config.attention_levels, len(config.widths), config.attention_heads,
        config.cross_attention, num_classes=1 if config.conditional else 0,
    )  # fmt: skip


def main(argv=None):
    args = parser().parse_args(argv)
    config = config_from_args(args)
    if is_chief():
        # Before anything loads: another writer, or a run that would be overwritten.
        claim_run_directory(config.output, args.resume, args.overwrite)
    # From here on TensorFlow loads (quietly: its C++ start-up lines go to /dev/null).
    import_tensorflow(needed=True)  # the input pipeline is tf.data on every backend
    from diffusion_keras.training.run import train

    check_settings(config)
    strategy = make_strategy(config.strategy, config.cpu_replicas)
    data = load_images(
        config.data,
        config.image_size,
        center_crop=config.center_crop,
        with_labels=config.conditional or config.train_classifier,
        with_captions=config.captions,
    )
    print(
        f"{len(data)} images from {config.data}; run directory {config.output}; "
        f"{strategy.num_replicas_in_sync} replica(s)"
    )
    verbose = "auto" if args.verbose is None else args.verbose
    paths = run_paths(config.output)
    try:
        train(config, resume=args.resume, verbose=verbose, data=data, strategy=strategy,
              overwrite=args.overwrite)  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"\ntrain.py: interrupted; the current weights are in {paths['interrupted']}, "
            "and --resume continues from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except Preempted as stopped:
        print(f"\ntrain.py: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    if worker_index(strategy) is None:
        print(f"saved {paths['model']}; samples in {paths['samples']}")
    return 0


def entry(argv=None):
    """The program: SIGTERM handling from the first moment, then `main`."""
    os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")  # before TensorFlow loads
    stderr = os.dup(2)  # TensorFlow's import silences descriptor 2 for a while

    def stop_before_training(signum, frame):
        # While TensorFlow loads there is nothing to save: exit at once.
        os.write(stderr, b"train.py: stopped by SIGTERM before training began; nothing to save\n")
        os._exit(128 + signum)

    # First of all (see the docs' "When things go wrong"); once the run's
    # handler is in, SIGTERM only asks the run to stop at a step boundary.
    signal.signal(signal.SIGTERM, stop_before_training)
    stop_signal().install()
    return run(main, argv)
