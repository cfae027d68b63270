"""The fixed sets that string settings choose from, each written once.

The modules that act on a setting validate it against its set here, and the
flags of `train.py` and `generate.py` offer the same set.
"""

SCHEDULES = ("linear", "cosine", "offset_cosine")
PREDICTIONS = ("noise", "image", "velocity")
LOSSES = ("mae", "mse")
LOSS_WEIGHTINGS = ("none", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "log_normal")
BATCH_NORMS = ("fused", "keras")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("constant", "cosine")
JIT_COMPILE = ("auto", "on", "off")
TEXT_ENCODER_TRAINING = ("frozen", "joint")
KID_FEATURES = ("auto", "inception", "random")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
SAMPLERS = ("ddim", "dpmpp_2m", "heun")
SPACINGS = ("uniform", "log_snr", "karras", "log_snr_span")
# The spacings whose N-step times are every other time of their 2N-step ones,
# as a distillation round's student and teacher need.
NESTED_SPACINGS = ("uniform", "log_snr_span")
LATENT_FACTORS = (4, 8)
RECIPE_NAMES = ("default", "book")
