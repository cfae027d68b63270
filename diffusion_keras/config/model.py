"""The settings a `DiffusionModel` is made of, saved in its file.

`NetworkConfig` is the U-Net, `DiffusionConfig` the noise and the training
objective. `DiffusionModel(**settings)` takes any of their fields, its
`get_config` writes them all, and `TrainConfig` (and so `train.py`'s flags)
holds both classes' fields: each default, choice and help is written here once.
The defaults are the package's measured recipe on the book's network.
"""

import dataclasses
from typing import ClassVar

from diffusion_keras.config import choices, types
from diffusion_keras.config.fields import NO_FLAG, check, setting

# The chapter's U-Net widths: three down blocks and the middle.
BOOK_WIDTHS = (32, 64, 96, 128)
# Log-SNR of the log-normal training times (`diffusion_keras.diffusion.weighting`):
# the mean is noisier than EDM's 1.0, measured faster to quality; the standard
# deviation is EDM's (2 x 1.2) for unit-variance data.
LOG_SNR_MEAN = -1.5
LOG_SNR_STD = 2.4


@dataclasses.dataclass
class NetworkConfig:
    """The book's U-Net: a sinusoidal noise embedding, residual down and up
    blocks with skips, optional attention."""

    TITLE: ClassVar[str] = "network (the U-Net)"

    image_size: int = setting(64, "height and width of the images", type=types.positive_int)
    channels: int = setting(3, "image channels", type=types.positive_int, flag=NO_FLAG)
    widths: tuple = setting(BOOK_WIDTHS, "U-Net widths, comma-separated: down blocks, then the "
                            "middle", type=types.int_list, metavar="W,W,...")  # fmt: skip
    block_depth: int = setting(2, "residual blocks per level", type=types.positive_int)
    embedding_dims: int = setting(32, "noise embedding size", type=types.positive_int)
    embedding_min_frequency: float = setting(1.0, "lowest frequency of the noise embedding",
                                             type=types.positive_float)  # fmt: skip
    embedding_max_frequency: float = setting(1000.0, "highest frequency of the noise embedding",
                                             type=types.positive_float)  # fmt: skip
    attention_levels: tuple = setting((), "U-Net levels with self-attention, comma-separated "
                                      "(0 = outermost)", type=types.level_list,
                                      metavar="L,L,...")  # fmt: skip
    attention_heads: int = setting(4, "heads of the attention blocks", type=types.positive_int)
    cross_attention: bool = setting(False, "--conditional: the class as a token the attention "
                                    "levels cross-attend to")  # fmt: skip
    batch_norm: str = setting("fused", "the U-Net's batch norm: fused (faster, the same "
                              "arithmetic) or keras (Keras's BatchNormalization)",
                              choices=choices.BATCH_NORMS, legacy_model="keras")  # fmt: skip
    remat: bool = setting(True, "recompute batch norm and swish in the backward pass: less "
                          "memory, the same weights and arithmetic",
                          legacy_model=False)  # fmt: skip


@dataclasses.dataclass
class DiffusionConfig:
    """The noise schedule and what training teaches: times, target, loss, EMA."""

    TITLE: ClassVar[str] = "noise and training objective"

    schedule: str = setting("offset_cosine", "diffusion schedule", choices=choices.SCHEDULES)
    min_signal_rate: float = setting(0.02, "signal rate at t=1", type=types.closed_unit_interval)
    max_signal_rate: float = setting(0.95, "signal rate at t=0", type=types.closed_unit_interval)
    prediction: str = setting("noise", "what the network predicts (noise is the book's)",
                              choices=choices.PREDICTIONS)  # fmt: skip
    loss: str = setting("mae", "loss on the prediction", choices=choices.LOSSES)
    loss_weighting: str = setting("none", "weight each image's loss by its noise level",
                                  choices=choices.LOSS_WEIGHTINGS)  # fmt: skip
    min_snr_gamma: float = setting(5.0, "--loss-weighting min_snr: gamma",
                                   type=types.positive_float)  # fmt: skip
    time_sampling: str = setting("log_normal", "how training draws diffusion times: uniform "
                                 "(the book's) or log_normal (log-SNR normal, as EDM draws "
                                 "noise levels; measured faster to quality)",
                                 choices=choices.TIME_SAMPLINGS, legacy_model="uniform",
                                 legacy_run="uniform")  # fmt: skip
    log_snr_mean: float = setting(LOG_SNR_MEAN, "--time-sampling log_normal: mean (EDM's is 1.0)",
                                  type=types.finite_float)  # fmt: skip
    log_snr_std: float = setting(LOG_SNR_STD, "--time-sampling log_normal: standard deviation",
                                 type=types.positive_float)  # fmt: skip
    ema: float = setting(0.999, "EMA decay of the sampling network's weights",
                         type=types.unit_interval)  # fmt: skip
    ema_warmup: bool = setting(True, "grow the EMA decay from 0.1 with the step count, so the "
                               "EMA network is useful from the first epoch")  # fmt: skip
    ema_length: float = setting(0.0, "EDM2's power-function EMA of this length relative to the "
                                "run so far (e.g. 0.1; 0 = the fixed --ema decay)",
                                type=types.ema_length)  # fmt: skip
    label_dropout: float = setting(0.1, "--conditional/--captions: share of labels (captions) "
                                   "trained as 'no class' (the empty prompt)",
                                   type=types.unit_interval)  # fmt: skip
    # A distilled student (`diffusion_keras.models.distillation`) samples as it was
    # taught: DDIM over this many steps on its spacing's grid, with the
    # teacher's classifier-free guidance at `student_guidance` built in.
    student_steps: int = setting(0, "a distilled student: the DDIM steps it "
                                 "samples in; 0 for a model that is not a student",
                                 type=types.non_negative_int, flag=NO_FLAG)  # fmt: skip
    student_spacing: str = setting("uniform", "a distilled student: where its steps fall "
                                   "(uniform in time, or log_snr_span: equal in log-SNR)",
                                   choices=choices.NESTED_SPACINGS, flag=NO_FLAG)  # fmt: skip
    student_guidance: float = setting(1.0, "a distilled student: the teacher's classifier-free "
                                      "guidance it learnt (generate then uses 1)",
                                      type=types.non_negative_float, flag=NO_FLAG)  # fmt: skip


@dataclasses.dataclass
class ModelConfig(NetworkConfig, DiffusionConfig):
    """Every setting a `DiffusionModel` keeps (the network's and the diffusion's)."""

    def __post_init__(self):
        check(self)
