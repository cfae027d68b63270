"""Train the book's diffusion model: `python train.py` (see --help)."""

import os

os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")  # before TensorFlow loads

import dataclasses
import signal
import sys

_STDERR = os.dup(2)  # TensorFlow's import silences descriptor 2 for a while


def _stop_before_training(signum, frame):
    # While TensorFlow loads there is nothing to save: exit at once.
    os.write(_STDERR, b"train.py: stopped by SIGTERM before training began; nothing to save\n")
    os._exit(128 + signum)


# First of all (see "When things go wrong" in the README); from the next
# import on, SIGTERM only asks the run to stop at a step boundary. Only when
# run as a program: importing this module changes no signal handling.
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_before_training)

from diffusion_keras.preemption import EXIT_PREEMPTED, stop_signal  # noqa: E402

if __name__ == "__main__":
    stop_signal().install()

from diffusion_keras.cli import (  # noqa: E402
    OneLineParser,
    UsageError,
    closed_unit_interval,
    finite_float,
    int_list,
    level_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    unit_interval,
)

# Settings that may differ from the saved run when resuming.
RESUMABLE = {
    "epochs", "keep_checkpoints", "plot_images", "plot_diffusion_steps", "data",
    "strategy", "cpu_replicas", "train_classifier", "classifier_epochs", "kid_diffusion_steps",
    "kid_features", "checkpoint_every",
}  # fmt: skip


def parser():
    p = OneLineParser(description="Train a denoising diffusion model (see the README).")
    add = p.add_argument
    add(
        "--recipe",
        choices=["default", "book"],
        help="training defaults: the package's (default) or the book's exactly (book: its EMA "
        "without warm-up, no flips, a constant learning rate); flags given still win",
    )
    add("--data", help="image folder, tfds:NAME or builtin:flowers[:N] (default builtin:flowers)")
    add("--image-size", type=positive_int, help="height and width (default 64)")
    add("--batch-size", type=positive_int, help="default 64")
    add("--epochs", type=positive_int, help="default 50")
    add(
        "--dataset-repetitions",
        type=positive_int,
        help="passes over the data per epoch (default 5)",
    )
    add("--widths", type=int_list, help="U-Net widths, comma-separated (default 32,64,96,128)")
    add("--block-depth", type=positive_int, help="residual blocks per level (default 2)")
    add("--embedding-dims", type=positive_int, help="noise embedding size (default 32)")
    add("--learning-rate", type=positive_float, help="AdamW learning rate (default 1e-3)")
    add(
        "--lr-schedule",
        choices=["constant", "cosine"],
        help="constant, or cosine: linear warm-up then cosine decay to 0 (default constant)",
    )
    add(
        "--warmup-steps",
        type=non_negative_int,
        help="--lr-schedule cosine: warm-up steps (default 0)",
    )
    add("--weight-decay", type=non_negative_float, help="AdamW weight decay (default 1e-4)")
    add(
        "--adam-beta2",
        dest="adam_beta_2",
        type=unit_interval,
        help="AdamW's second-moment decay in [0, 1) (default 0.999)",
    )
    add("--ema", type=unit_interval, help="EMA decay in [0, 1) (default 0.999)")
    add(
        "--ema-warmup",
        action=__import__("argparse").BooleanOptionalAction,
        help="grow the EMA decay from 0.1 with the step count (default on)",
    )
    add(
        "--schedule",
        choices=["offset_cosine", "cosine", "linear"],
        help="diffusion schedule (default offset_cosine)",
    )
    add(
        "--min-signal-rate",
        type=closed_unit_interval,
        help="offset_cosine signal rate at t=1 (default 0.02)",
    )
    add(
        "--max-signal-rate",
        type=closed_unit_interval,
        help="offset_cosine signal rate at t=0 (default 0.95)",
    )
    add("--loss", choices=["mae", "mse"], help="loss on the prediction (default mae)")
    add(
        "--loss-weighting",
        choices=["none", "min_snr"],
        help="weight each image's loss by its noise level: none or min_snr (default none)",
    )
    add("--min-snr-gamma", type=positive_float, help="--loss-weighting min_snr: gamma (default 5)")
    add(
        "--time-sampling",
        choices=["uniform", "log_normal"],
        help="how training draws diffusion times: uniform (the book's) or log_normal (log-SNR "
        "normal, as EDM draws noise levels; default log_normal)",
    )
    add(
        "--log-snr-mean",
        type=finite_float,
        help="--time-sampling log_normal: mean (default -1.5; EDM's is 1.0)",
    )
    add(
        "--log-snr-std",
        type=positive_float,
        help="--time-sampling log_normal: standard deviation (default 2.4)",
    )
    add(
        "--prediction",
        choices=["noise", "image", "velocity"],
        help="what the network predicts (default noise, the book's)",
    )
    add(
        "--attention-levels",
        type=level_list,
        help="U-Net levels with self-attention, comma-separated (0 = outermost; default none)",
    )
    add("--attention-heads", type=positive_int, help="heads of the attention blocks (default 4)")
    add(
        "--cross-attention",
        action="store_true",
        default=None,
        help="--conditional: the class as a token the attention levels cross-attend to",
    )
    add(
        "--latent",
        action="store_true",
        default=None,
        help="latent diffusion: train an autoencoder first (into RUN_DIR/autoencoder.keras), "
        "then the U-Net on its latents",
    )
    add(
        "--autoencoder",
        help="--latent with this autoencoder (an autoencoder.keras from an earlier run)",
    )
    add("--latent-factor", type=int, choices=[4, 8], help="--latent: downsampling (default 4)")
    add("--latent-channels", type=positive_int, help="--latent: latent channels (default 4)")
    add(
        "--autoencoder-epochs",
        type=positive_int,
        help="--latent: epochs of autoencoder training (default 10)",
    )
    add(
        "--autoencoder-crop",
        type=non_negative_int,
        help="--latent: train the autoencoder on random NxN crops of larger images (default "
        "64; 0 whole images)",
    )
    add(
        "--precise-bn-batches",
        type=non_negative_int,
        help="recompute the EMA network's batch-norm statistics from N batches at each "
        "epoch's end (default 16; 0 off, as --recipe book)",
    )
    add(
        "--captions",
        action="store_true",
        default=None,
        help="text-to-image: train on captions (builtin:flowers makes its own; folders: "
        "metadata.jsonl or NAME.txt beside each image); needs --attention-levels",
    )
    add(
        "--text-encoder",
        help="--captions with this text encoder (a text_encoder.keras from an earlier run)",
    )
    add(
        "--text-encoder-epochs",
        type=positive_int,
        help="--captions: epochs of contrastive (CLIP) text-encoder training (default 10)",
    )
    add(
        "--text-encoder-training",
        choices=["frozen", "joint"],
        help="--captions: keep the CLIP-trained text encoder frozen (default, Stable "
        "Diffusion's way) or train it on with the U-Net (joint, GLIDE's way)",
    )
    add(
        "--conditional",
        action="store_true",
        default=None,
        help="class-conditional model: classes are the data folder's subfolders (or tfds labels)",
    )
    add(
        "--label-dropout",
        type=unit_interval,
        help="--conditional/--captions: share of labels (captions) trained as 'no class' "
        "(the empty prompt; default 0.1)",
    )
    add(
        "--train-classifier",
        action="store_true",
        default=None,
        help="also train a classifier of noisy images for classifier guidance",
    )
    add("--classifier-epochs", type=positive_int, help="classifier epochs (default 10)")
    add(
        "--kid-every",
        type=positive_int,
        help="measure KID on held-out images every N epochs (default: never)",
    )
    add("--kid-images", type=positive_int, help="images held out for KID (default 200)")
    add(
        "--kid-diffusion-steps",
        type=positive_int,
        help="sampling steps for the KID images (default 5)",
    )
    add(
        "--kid-features",
        choices=["auto", "inception", "random"],
        help="KID features: auto (Inception if its weights load, else random; default)",
    )
    add(
        "--precision",
        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        help="numeric precision (default auto: see the README)",
    )
    add(
        "--jit-compile",
        choices=["auto", "on", "off"],
        help="compile the training step with XLA (default auto: off; see the README)",
    )
    add(
        "--remat",
        action=__import__("argparse").BooleanOptionalAction,
        help="recompute batch norm and swish in the backward pass: less memory (default on)",
    )
    add("--seed", type=int, help="seed for data order, flips and noise (default 42)")
    add(
        "--flip",
        action=__import__("argparse").BooleanOptionalAction,
        help="random horizontal flips (default off: mirrored text and faces are not data)",
    )
    add(
        "--center-crop",
        action=__import__("argparse").BooleanOptionalAction,
        help="crop images to a centred square before resizing (default off)",
    )
    add(
        "--strategy",
        choices=["auto", "default", "mirrored", "multiworker", "tpu"],
        help="tf.distribute strategy (default auto: mirrored when more than one GPU)",
    )
    add(
        "--cpu-replicas",
        type=positive_int,
        help="split the CPU into N logical devices, to try multi-device training",
    )
    add("--output", help="run directory (default runs/flowers)")
    add(
        "--resume",
        action="store_true",
        help="continue the run in --output from its last checkpoint",
    )
    add("--keep-checkpoints", type=positive_int, help="epoch checkpoints kept (default 3)")
    add(
        "--checkpoint-every",
        type=checkpoint_every,
        help="also checkpoint inside epochs: every N steps, every Nm minutes (10m), or 0 for "
        "epoch ends only (default 5m)",
    )
    add("--plot-images", type=positive_int, help="images in each epoch's sample grid (default 10)")
    add("--plot-diffusion-steps", type=positive_int, help="steps for the sample grids (default 20)")
    add(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        default=None,
        help="Keras verbosity (default: progress bar)",
    )
    return p


def checkpoint_every(text):
    from diffusion_keras.checkpoints import parse_checkpoint_every

    try:
        parse_checkpoint_every(text)
    except ValueError:
        raise __import__("argparse").ArgumentTypeError(
            f"expected steps (500), minutes (10m) or 0, got {text!r}"
        ) from None
    return text.strip().lower()


def config_from_args(args):
    from diffusion_keras.training import TrainConfig

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if "widths" in given:
        given["widths"] = tuple(given["widths"])
    if "attention_levels" in given:
        given["attention_levels"] = tuple(given["attention_levels"])
    if given.get("autoencoder"):
        given["latent"] = True
    if given.get("text_encoder"):
        given["captions"] = True
    if not args.resume:
        return TrainConfig.for_recipe(args.recipe or "default", **given)
    if args.recipe is not None:
        raise UsageError("--resume: --recipe applies to new runs; the run keeps its settings")
    import os

    from diffusion_keras.training import run_paths

    output = given.get("output", TrainConfig.output)
    config_path = run_paths(output)["config"]
    if not os.path.exists(config_path):
        raise UsageError(f"--resume: {config_path} not found; is {output!r} a run directory?")
    config = TrainConfig.load(config_path)
    for name, value in given.items():
        if name == "output":
            continue
        if name == "precision":
            from diffusion_keras.precision import resolve_precision

            value = resolve_precision(value)
        if name not in RESUMABLE and value != getattr(config, name):
            raise UsageError(
                f"--resume: --{name.replace('_', '-')} {value} differs from the run's "
                f"{getattr(config, name)}; only {', '.join(sorted(RESUMABLE))} may change"
            )
        setattr(config, name, value)
    return config


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras.data import load_images
    from diffusion_keras.latent import training_crop
    from diffusion_keras.training import run_paths, train
    from diffusion_keras.unet import validate_attention, validate_unet_args

    config = config_from_args(args)
    from diffusion_keras.distribute import make_strategy
    from diffusion_keras.schedules import validate_schedule

    validate_schedule(config.schedule, config.min_signal_rate, config.max_signal_rate)

    strategy = make_strategy(config.strategy, config.cpu_replicas)
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
    from diffusion_keras.errors import Preempted

    try:
        train(config, resume=args.resume, verbose=verbose, data=data, strategy=strategy)
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
    from diffusion_keras.distribute import worker_index

    if worker_index(strategy) is None:
        print(f"saved {paths['model']}; samples in {paths['samples']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
