"""The EMA copy: a network that follows the trained one with an exponential
moving average of its weights, and samples in its place.

`EMA` is the part of `DiffusionModel` that keeps the copy up to date. The
networks themselves stay the model's (`network`, `ema_network`, and for a
jointly trained text encoder `text_encoder`, `ema_text_encoder`), where the
model's files keep them.
"""

import numpy as np
from keras import ops


def power_ema_exponent(length):
    """EDM2's gamma for a relative EMA length `length` (sigma_rel, the
    standard deviation of the averaging profile over the run's length):
    the largest real root of (g + 1) / ((g + 2)^2 (g + 3)) = length^2
    (Karras et al. 2024, eq. 3 and appendix C.1)."""
    t = float(length) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


class EMA:
    """Updates the EMA copies of a model's trained networks.

    Args:
        pairs: a function returning `(trained_weight, ema_weight)` pairs.
        decay: float in [0, 1). The EMA decay.
        warmup: bool. Grow the decay as `min(decay, (1 + n) / (10 + n))`
            with the step count `n`, so the EMA network is useful from the
            first epoch.
        steps: the model's training-step counter (a variable).
        length: float in [0, 1). When above 0, the EMA is EDM2's power
            function EMA of this relative length instead (Karras et al.
            2024): the decay at update t (counting from 1) is
            (1 - 1 / t)^(gamma + 1), so the average always spans the same
            share of the run so far; `decay` and `warmup` are then unused.
    """

    def __init__(self, pairs, decay, warmup, steps, length=0.0):
        self.pairs, self.decay, self.warmup, self.steps = pairs, decay, warmup, steps
        self.length = float(length)
        self.exponent = power_ema_exponent(self.length) + 1.0 if self.length > 0 else None

    def current_decay(self):
        """The EMA decay for the next update: the power function's, or the
        fixed decay with the warm-up if enabled."""
        if self.exponent is not None:
            t = ops.cast(self.steps, "float32") + 1.0
            return ops.power(1.0 - 1.0 / t, self.exponent)
        if not self.warmup:
            return ops.convert_to_tensor(self.decay, "float32")
        n = ops.cast(self.steps, "float32")
        return ops.minimum(self.decay, (1.0 + n) / (10.0 + n))

    def update(self):
        """One step of the average: BatchNorm statistics follow too."""
        decay = self.current_decay()
        for weight, ema_weight in self.pairs():
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)
