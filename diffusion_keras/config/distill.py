"""Distillation runs: `DistillConfig`, every setting of `distill.py`, saved as
`DIR/config.json`. `distill.py`'s flags and the docs' flag reference are
derived from it, as `train.py`'s are from `TrainConfig`."""

import dataclasses
from typing import ClassVar

from diffusion_keras.config import choices, fields, types
from diffusion_keras.config.fields import setting
from diffusion_keras.config.run import DEFAULT_CHECKPOINT_EVERY

# The first round: unless the teacher is a student, or --steps asks for more
# than FIRST_STUDENT_STEPS (then the first round halves twice --steps), it
# makes a student of FIRST_STUDENT_STEPS steps, each of which copies
# FIRST_SUBSTEPS of the teacher's DDIM steps: a 4-step student of the
# teacher's DDIM 12, at FIRST_ROUND_RATE x its rate
# (`training.distill.round_learning_rate`). A student copies its first
# teacher's DDIM, and a briefly trained teacher's DDIM 8 (the default from
# 8 -> 4 before 2026-12-08) is 2-18% farther from held-out real images than
# its DDIM 20, the 4-step target; DDIM 12 lies nearer DDIM 20. On four
# real-set teachers the 4- and 2-step students from 12 in 3 were nearer
# held-out images in 19 of 24 distances (5 of 8 by the check classifier, by
# 7-9% on the photographs), the 1-step ones farther by the check on 3 of 4; on
# the flowers and glyphs they met 8 of the 12 KID targets against 6
# (docs/results/distillation.md).
FIRST_STUDENT_STEPS = 4
FIRST_SUBSTEPS = 3

# Where the students' steps fall (`sampling.rules.sampling_times`): uniform
# in time, as the book samples, or `log_snr_span`, equal in log-SNR from t = 1
# to 0 (most steps where the image is mostly noise). On four real-set
# teachers the log-SNR students were nearer held-out images by the plain
# classifier in 17 of 18 comparisons but by the check classifier, the
# default's measure, in 5 of 18, 4 of them on one teacher
# (docs/results/distillation.md, 2026-12-07).
STUDENT_SPACING = "uniform"

# The rounds' learning rate: an N-step round's is this / N
# (`training.distill.ROUND_RATE_POWER`), 4x that where the students switch
# prediction (`training.distill.PREDICTION_SWITCH_RATE`). Against 2e-4 (the default before
# 2026-12-06), 1e-4 gave better trained-feature KID at every step count, on
# flowers and glyphs, with two teachers each: 16 of 16 comparisons
# (docs/results/distillation.md).
LEARNING_RATE = 1e-4


@dataclasses.dataclass
class DistillRoundsConfig:
    TITLE: ClassVar[str] = "rounds"

    steps: int = setting(1, "the student's sampling steps at the end: each round halves "
                         "the steps, from --from-steps down to this",
                         type=types.positive_int)  # fmt: skip
    from_steps: int = setting(0, "the teacher's DDIM steps that the first round distils (0: "
                              f"{FIRST_STUDENT_STEPS * FIRST_SUBSTEPS}, {FIRST_SUBSTEPS} to "
                              f"each step of a {FIRST_STUDENT_STEPS}-step student, as measured "
                              "(18 for --steps 3); twice --steps above "
                              f"{FIRST_STUDENT_STEPS}; or a student's own steps)",
                              type=types.non_negative_int)  # fmt: skip
    first_substeps: int = setting(0, "the teacher's DDIM steps per student step in the first "
                                  "round: 2 halves --from-steps, as every later round does; "
                                  "more copies a finer DDIM at once, at 4x the round's rate "
                                  f"(0: {FIRST_SUBSTEPS} where --from-steps is left out and "
                                  f"--steps is at most {FIRST_STUDENT_STEPS}, as measured, "
                                  "else 2)",
                                  type=types.non_negative_int, legacy_run=2)  # fmt: skip
    spacing: str = setting("auto", "where the students' steps fall: uniform in time, or "
                           "log_snr_span, equal in log signal-to-noise ratio over the whole "
                           f"schedule (auto: {STUDENT_SPACING}, or a student teacher's own)",
                           choices=("auto",) + choices.NESTED_SPACINGS,
                           legacy_run="uniform")  # fmt: skip
    guidance_scale: float = setting(1.0, "a conditional teacher's classifier-free guidance, "
                                    "built into the student",
                                    type=types.non_negative_float)  # fmt: skip
    prediction: str = setting("auto", "what the students predict (auto: their teacher's, with "
                              "which a student starts as its teacher, but velocity for a "
                              "1-step student of a noise teacher, as measured)",
                              choices=("auto",) + choices.PREDICTIONS)  # fmt: skip


@dataclasses.dataclass
class DistillTrainingConfig:
    TITLE: ClassVar[str] = "training of each round"

    data: str = setting("", "the teacher's training images (default: the --data of the "
                        "teacher's run, read from its config.json)")  # fmt: skip
    center_crop: bool = setting(False, "crop images to a centred square before resizing "
                                "(default: as the teacher's run)")  # fmt: skip
    budget: float = setting(0.4, "the images all rounds train on together, as a share of the "
                            "images the teacher trained on (each student step also runs the "
                            "teacher twice: 0.4 cost 0.67-0.84 of the teacher's training CPU "
                            "time, measured)", type=types.positive_float)  # fmt: skip
    round_epochs: int = setting(0, "epochs of each round (0: from --budget)",
                                type=types.non_negative_int)  # fmt: skip
    dataset_repetitions: int = setting(1, "passes over the data per epoch",
                                       type=types.positive_int)  # fmt: skip
    batch_size: int = setting(16, "images per step", type=types.positive_int)
    learning_rate: float = setting(LEARNING_RATE, "AdamW learning rate of the rounds: "
                                   "a round of N-step students starts at this / N, 4x that "
                                   "where the students predict something else than their "
                                   "teacher (a noise teacher's 1-step student), and "
                                   "decays to 0 along a cosine",
                                   type=types.positive_float)  # fmt: skip
    ema: float = setting(0.999, "EMA decay of the student's sampling network, at most (1 + n) "
                         "/ (10 + n) after n steps: that warm-up alone sets it in rounds of "
                         "a few hundred steps, as the default's are",
                         type=types.unit_interval)  # fmt: skip
    seed: int = setting(42, "seed for the data order and the noise", type=types.any_int)
    precision: str = setting("auto", "numeric precision (as train.py's)",
                             choices=("auto",) + choices.PRECISIONS)  # fmt: skip


@dataclasses.dataclass
class DistillOutputConfig:
    TITLE: ClassVar[str] = "outputs"

    output: str = setting("runs/distilled", "distillation directory: DIR/model.keras is the "
                          "last student, DIR/rounds/steps_NNN/ each round's run")  # fmt: skip
    plot_images: int = setting(10, "images in each epoch's sample grid", type=types.positive_int)
    keep_checkpoints: int = setting(2, "epoch checkpoints kept per round",
                                    type=types.positive_int)  # fmt: skip
    checkpoint_every: str = setting(DEFAULT_CHECKPOINT_EVERY, "also checkpoint inside epochs "
                                    "(as train.py's)", type=types.checkpoint_every)  # fmt: skip


DISTILL_GROUPS = (DistillRoundsConfig, DistillTrainingConfig, DistillOutputConfig)


@dataclasses.dataclass
class DistillConfig(DistillOutputConfig, DistillTrainingConfig, DistillRoundsConfig):
    """Everything that defines a distillation; saved as `DIR/config.json`.

    `teacher` is the model file distilled (the CLI's MODEL)."""

    teacher: str = setting("", "the trained model to distil", flag=fields.NO_FLAG)

    def __post_init__(self):
        fields.check(self)

    def save(self, path):
        """Writes the config as JSON, atomically."""
        fields.save_json(self, path)

    @classmethod
    def load(cls, path):
        """Reads a saved config (`fields.load_json`)."""
        return fields.load_json(cls, path)
