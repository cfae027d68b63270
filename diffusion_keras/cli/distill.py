"""`distill.py` (and the `diffusion-keras-distill` command): distil a trained
model into a student that samples in fewer steps (progressive distillation).

The flags are derived from `DistillConfig`'s groups
(`diffusion_keras.config.distill`). The arguments are parsed before
TensorFlow is imported, so `--help` and argument errors answer at once.
"""

import os
import signal
import sys

from diffusion_keras.cli.common import OneLineParser, UsageError, run
from diffusion_keras.config import fields
from diffusion_keras.config.distill import DISTILL_GROUPS, DistillConfig
from diffusion_keras.training.distill_files import claim_distill_directory, distill_paths
from diffusion_keras.training.preemption import EXIT_PREEMPTED, stop_signal
from diffusion_keras.utils.errors import Preempted
from diffusion_keras.utils.quiet import import_tensorflow


def parser():
    p = OneLineParser(
        description="Distil a trained diffusion model into a student that samples in 1-32 "
        "steps (progressive distillation: each round halves the steps). Writes "
        "OUTPUT/model.keras, a normal model file that generate.py samples in its own steps.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="the trained model (a student continues halving)"
    )
    start = p.add_argument_group("start here")
    start.add_argument("--resume", action="store_true",
                       help="continue the distillation in --output: finished rounds are kept, "
                       "the round in progress resumes from its last checkpoint")  # fmt: skip
    start.add_argument("--overwrite", action="store_true",
                       help="start anew in an --output that holds a distillation: the old one "
                       "is moved aside to <output>.old-<time>, never deleted")  # fmt: skip
    start.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None,
                       help="Keras verbosity (default: a progress bar)")  # fmt: skip
    for group in DISTILL_GROUPS:
        fields.add_flags(p, group)
    return p


def config_from_args(args):
    given = fields.given_flags(args, DistillConfig)
    if args.resume and set(given) - {"output"}:
        flag = "--" + sorted(set(given) - {"output"})[0].replace("_", "-")
        raise UsageError(f"--resume: {flag} applies to new distillations; the run keeps its own")
    if not os.path.isfile(args.model):
        raise UsageError(f"{args.model} does not exist")
    return DistillConfig(teacher=args.model, **given)


def main(argv=None):
    args = parser().parse_args(argv)
    config = config_from_args(args)
    if not args.overwrite:
        # Before anything loads: another writer, or a distillation it would overwrite.
        claim_distill_directory(config.output, args.resume, overwrite=False)
    import_tensorflow(needed=True)  # the input pipeline is tf.data on every backend
    from diffusion_keras.training.distill import distill

    verbose = "auto" if args.verbose is None else args.verbose
    try:
        distill(config, resume=args.resume, overwrite=args.overwrite, verbose=verbose)
    except KeyboardInterrupt:
        print(
            "\ndistill.py: interrupted; the round's current weights are in its "
            "interrupted.keras, and --resume continues from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    except Preempted as stopped:
        print(f"\ndistill.py: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    print(f"saved {distill_paths(config.output)['model']}")
    return 0


def entry(argv=None):
    """The program: SIGTERM handling from the first moment, then `main`."""
    os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")  # before TensorFlow loads
    stderr = os.dup(2)

    def stop_before_training(signum, frame):
        os.write(stderr, b"distill.py: stopped by SIGTERM before training began; nothing to save\n")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop_before_training)
    stop_signal().install()
    return run(main, argv)
