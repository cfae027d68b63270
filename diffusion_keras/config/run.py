"""Training runs: `TrainConfig`, every setting of a run, saved as `RUN_DIR/config.json`.

`TrainConfig` is composed of one small dataclass per concern (the model's
`NetworkConfig` and `DiffusionConfig`, then data, optimisation, latent
diffusion, text, classes, quality, distribution and outputs). Each setting is
written once, with `setting`; `train.py`'s flags, in `--help` groups of the
same names, and the docs' flag reference are derived from these classes.
"""

import dataclasses
import os
from typing import ClassVar

from diffusion_keras.config import choices, fields, types
from diffusion_keras.config.fields import setting
from diffusion_keras.config.model import DiffusionConfig, NetworkConfig

DEFAULT_CHECKPOINT_EVERY = "5m"


@dataclasses.dataclass
class DataConfig:
    TITLE: ClassVar[str] = "data"

    data: str = setting("builtin:flowers", "image folder, tfds:NAME or builtin:flowers[:N]",
                        resumable=True)  # fmt: skip
    batch_size: int = setting(64, "images per training step", type=types.positive_int)
    dataset_repetitions: int = setting(5, "passes over the data per epoch",
                                       type=types.positive_int)  # fmt: skip
    flip: bool = setting(False, "random horizontal flips (off: mirrored text and faces are not "
                         "data)")  # fmt: skip
    center_crop: bool = setting(False, "crop images to a centred square before resizing")


@dataclasses.dataclass
class OptimizerConfig:
    TITLE: ClassVar[str] = "optimisation"

    epochs: int = setting(50, "training epochs", type=types.positive_int, resumable=True)
    # 2e-3 beat the book's 1e-3 at 392 steps on 21 of 24 (sampler, measure) pairs of the
    # real-data benches (docs/results/real-data.md, 2026-12-05).
    learning_rate: float = setting(2e-3, "AdamW learning rate", type=types.positive_float)
    lr_schedule: str = setting("constant", "constant, or cosine: linear warm-up then cosine "
                               "decay to 0 over the run", choices=choices.LR_SCHEDULES)  # fmt: skip
    warmup_steps: int = setting(0, "--lr-schedule cosine: warm-up steps",
                                type=types.non_negative_int)  # fmt: skip
    weight_decay: float = setting(1e-4, "AdamW weight decay", type=types.non_negative_float)
    adam_beta_2: float = setting(0.999, "AdamW's second-moment decay in [0, 1) (lucidrains' "
                                 "trainer uses 0.99; at 392 steps it made no difference here)",
                                 type=types.unit_interval, flag="--adam-beta2")  # fmt: skip
    precise_bn_batches: int = setting(16, "recompute the EMA network's batch-norm statistics "
                                      "from N batches at each epoch's end (0 off, as --recipe "
                                      "book)", type=types.non_negative_int,
                                      legacy_run=0)  # fmt: skip
    seed: int = setting(42, "seed for the weights, data order, flips and noise",
                        type=types.any_int)  # fmt: skip
    precision: str = setting("auto", "numeric precision (auto: mixed_bfloat16 where the CPU "
                             "has native bfloat16 and it measured faster, else float32)",
                             choices=("auto",) + choices.PRECISIONS)  # fmt: skip
    jit_compile: str = setting("auto", "compile the training step with XLA (auto: off, "
                               "measured slower on CPUs)", choices=choices.JIT_COMPILE)  # fmt: skip


@dataclasses.dataclass
class LatentConfig:
    TITLE: ClassVar[str] = "latent diffusion"

    latent: bool = setting(False, "latent diffusion: train an autoencoder first (into "
                           "RUN_DIR/autoencoder.keras), then the U-Net on its latents")  # fmt: skip
    autoencoder: str = setting("", "--latent with this autoencoder (an autoencoder.keras from "
                               "an earlier run)")  # fmt: skip
    latent_factor: int = setting(4, "--latent: downsampling", type=int,
                                 choices=choices.LATENT_FACTORS)  # fmt: skip
    latent_channels: int = setting(4, "--latent: latent channels", type=types.positive_int)
    autoencoder_epochs: int = setting(10, "--latent: epochs of autoencoder training",
                                      type=types.positive_int)  # fmt: skip
    autoencoder_crop: int = setting(64, "--latent: train the autoencoder on random NxN crops "
                                    "of larger images (0: whole images)",
                                    type=types.non_negative_int)  # fmt: skip


@dataclasses.dataclass
class TextConfig:
    TITLE: ClassVar[str] = "text to image"

    captions: bool = setting(False, "text-to-image: train on captions (builtin:flowers makes "
                             "its own; folders: metadata.jsonl or NAME.txt beside each image); "
                             "needs --attention-levels")  # fmt: skip
    text_encoder: str = setting("", "--captions with this text encoder (a text_encoder.keras "
                                "from an earlier run)")  # fmt: skip
    text_encoder_epochs: int = setting(10, "--captions: epochs of contrastive (CLIP) "
                                       "text-encoder training",
                                       type=types.positive_int)  # fmt: skip
    text_encoder_training: str = setting("frozen", "--captions: keep the CLIP-trained text "
                                         "encoder frozen (Stable Diffusion's way) or train it "
                                         "on with the U-Net (joint, GLIDE's way)",
                                         choices=choices.TEXT_ENCODER_TRAINING)  # fmt: skip


@dataclasses.dataclass
class ClassesConfig:
    TITLE: ClassVar[str] = "classes"

    conditional: bool = setting(False, "class-conditional model: classes are the data folder's "
                                "subfolders (or tfds labels)")  # fmt: skip
    train_classifier: bool = setting(False, "also train a classifier of noisy images for "
                                     "classifier guidance", resumable=True)  # fmt: skip
    classifier_epochs: int = setting(10, "classifier epochs", type=types.positive_int,
                                     resumable=True)  # fmt: skip


@dataclasses.dataclass
class QualityConfig:
    TITLE: ClassVar[str] = "quality during training"

    kid_every: int = setting(0, "measure KID on held-out images every N epochs (0: never)",
                             type=types.non_negative_int)  # fmt: skip
    kid_images: int = setting(200, "images held out for KID", type=types.positive_int)
    kid_diffusion_steps: int = setting(5, "sampling steps for the KID images",
                                       type=types.positive_int, resumable=True)  # fmt: skip
    kid_features: str = setting("auto", "KID features: auto (Inception if its weights load, "
                                "else random)", choices=choices.KID_FEATURES,
                                resumable=True)  # fmt: skip


@dataclasses.dataclass
class DistributeConfig:
    TITLE: ClassVar[str] = "distribution"

    strategy: str = setting("auto", "tf.distribute strategy, or on JAX keras.distribution "
                            "(auto: mirrored when more than one device; PyTorch: one device)",
                            choices=choices.STRATEGIES, resumable=True)  # fmt: skip
    cpu_replicas: int = setting(1, "split the CPU into N logical devices (JAX: N host "
                                "devices), to try multi-device training",
                                type=types.positive_int, resumable=True)  # fmt: skip


@dataclasses.dataclass
class OutputConfig:
    TITLE: ClassVar[str] = "outputs"

    output: str = setting("runs/flowers", "run directory")
    plot_images: int = setting(10, "images in each epoch's sample grid", type=types.positive_int,
                               resumable=True)  # fmt: skip
    plot_diffusion_steps: int = setting(20, "steps for the sample grids",
                                        type=types.positive_int, resumable=True)  # fmt: skip
    keep_checkpoints: int = setting(3, "epoch checkpoints kept", type=types.positive_int,
                                    resumable=True)  # fmt: skip
    checkpoint_every: str = setting(DEFAULT_CHECKPOINT_EVERY, "also checkpoint inside epochs: "
                                    "every N steps, every Nm minutes (10m), or 0 for epoch ends "
                                    "only", type=types.checkpoint_every,
                                    resumable=True)  # fmt: skip


# The groups of a run, in the order `--help` shows them.
GROUPS = (DataConfig, NetworkConfig, DiffusionConfig, OptimizerConfig, LatentConfig, TextConfig,
          ClassesConfig, QualityConfig, DistributeConfig, OutputConfig)  # fmt: skip


@dataclasses.dataclass
class TrainConfig(
    OutputConfig, DistributeConfig, QualityConfig, ClassesConfig, TextConfig, LatentConfig,
    OptimizerConfig, DiffusionConfig, NetworkConfig, DataConfig,
):  # fmt: skip
    """Everything that defines a training run; saved as `RUN_DIR/config.json`.

    One field per setting of `GROUPS` (see each for its help). The defaults
    are the package's recipe; `TrainConfig.for_recipe("book")` (`train.py
    --recipe book`) is the book's exactly (see `RECIPES`).
    """

    def __post_init__(self):
        fields.check(self)

    @classmethod
    def for_recipe(cls, recipe="default", **settings):
        """A config with `recipe`'s defaults (see `RECIPES`), then `settings`."""
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
        return cls(**{**RECIPES[recipe], **settings})

    def save(self, path):
        """Writes the config as JSON, atomically."""
        fields.save_json(self, path)

    @classmethod
    def load(cls, path):
        """Reads a saved config (`fields.load_json`)."""
        return fields.load_json(cls, path)


def run_paths(run_dir):
    """The files and folders of a run directory."""
    return {
        "config": os.path.join(run_dir, "config.json"),
        "checkpoints": os.path.join(run_dir, "checkpoints"),
        "samples": os.path.join(run_dir, "samples"),
        "logs": os.path.join(run_dir, "logs"),
        "history": os.path.join(run_dir, "history.csv"),
        "steps": os.path.join(run_dir, "steps.csv"),
        "model": os.path.join(run_dir, "model.keras"),
        "interrupted": os.path.join(run_dir, "interrupted.keras"),
        "classifier": os.path.join(run_dir, "classifier.keras"),
    }


# Settings that may differ from the saved run when resuming.
RESUMABLE = frozenset(f.name for f in fields.settings_of(TrainConfig) if f.metadata["resumable"])

# Training recipes: the settings that differ from `TrainConfig`'s defaults.
RECIPES = {
    "default": {},
    # The book's notebook exactly: its EMA from the first step (no warm-up) and
    # no flips, a constant learning rate, the loss on the noise unweighted,
    # uniform times, no precise batch norm. Its values, written out, so that
    # changing a default of ours leaves the book's recipe as it was.
    "book": dict(flip=False, ema=0.999, ema_warmup=False, ema_length=0.0, precise_bn_batches=0,
                 learning_rate=1e-3,
                 adam_beta_2=0.999, lr_schedule="constant", warmup_steps=0, loss="mae",
                 prediction="noise", loss_weighting="none", time_sampling="uniform",
                 batch_size=64),
}  # fmt: skip
assert tuple(RECIPES) == choices.RECIPE_NAMES
