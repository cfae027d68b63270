"""The EMA copy: a network that follows the trained one with an exponential
moving average of its weights, and samples in its place.

`EMA` is the part of `DiffusionModel` that keeps the copy up to date. The
networks themselves stay the model's (`network`, `ema_network`, and for a
jointly trained text encoder `text_encoder`, `ema_text_encoder`), where the
model's files keep them.
"""

from keras import ops


class EMA:
    """Updates the EMA copies of a model's trained networks.

    Args:
        pairs: a function returning `(trained_weight, ema_weight)` pairs.
        decay: float in [0, 1). The EMA decay.
        warmup: bool. Grow the decay as `min(decay, (1 + n) / (10 + n))`
            with the step count `n`, so the EMA network is useful from the
            first epoch.
        steps: the model's training-step counter (a variable).
    """

    def __init__(self, pairs, decay, warmup, steps):
        self.pairs, self.decay, self.warmup, self.steps = pairs, decay, warmup, steps

    def current_decay(self):
        """The EMA decay for the next update, with the warm-up if enabled."""
        if not self.warmup:
            return ops.convert_to_tensor(self.decay, "float32")
        n = ops.cast(self.steps, "float32")
        return ops.minimum(self.decay, (1.0 + n) / (10.0 + n))

    def update(self):
        """One step of the average: BatchNorm statistics follow too."""
        decay = self.current_decay()
        for weight, ema_weight in self.pairs():
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)
