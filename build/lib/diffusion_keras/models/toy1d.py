"""The smallest diffusion model: one-dimensional data, in Keras.

Data come from a mixture of two Gaussians (means -4 and 4, unit variance, the
right one twice as likely). The forward process adds noise for `T` = 250 steps
with a constant beta of 0.02; two small networks predict the mean and the
standard deviation of the reverse step p(x_{t-1} | x_t), and are trained on the
variational bound. Sampling runs the reverse process from N(0, 1).

Symbols: x_t the sample after t steps; q(x_t | x_{t-1}) = N(sqrt(1 - beta)
x_{t-1}, beta); p(x_{t-1} | x_t) = N(mu(x_t, t), sigma(x_t, t)).

References:
- [Ho et al., 2020 (DDPM), eq. 1-3](https://arxiv.org/abs/2006.11239)
"""

import math

import keras
import numpy as np
import tensorflow as tf

from diffusion_keras.data.datasets import without_autotune

TIME_STEPS = 250
BETA = 0.02
MEANS = (-4.0, 4.0)
WEIGHTS = (1.0 / 3.0, 2.0 / 3.0)


def sample_data(count, seed=0):
    """`count` samples of the two-Gaussian mixture, float32 `(count, 1)`."""
    rng = np.random.default_rng(seed)
    component = rng.uniform(size=count) < WEIGHTS[1]
    means = np.where(component, MEANS[1], MEANS[0])
    return (means + rng.standard_normal(count)).astype("float32")[:, None]


def forward_trajectory(data, seed, steps=TIME_STEPS, beta=BETA):
    """x_0 ... x_T `(T + 1, n, 1)`, each step x_t ~ q(x_t | x_{t-1})."""
    noises = tf.random.stateless_normal((steps,) + tuple(data.shape), seed=seed)
    keep = math.sqrt(1.0 - beta)
    scale = math.sqrt(beta)

    def step(previous, noise):
        return keep * previous + scale * noise

    return tf.concat([data[None], tf.scan(step, noises, initializer=data)], axis=0)


def _network(hidden, positive, name):
    inputs = keras.Input((2,))
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    output = keras.layers.Dense(1, activation="softplus" if positive else None)(x)
    return keras.Model(inputs, output, name=name)


def _normal_log_prob(x, mean, std):
    return -0.5 * tf.square((x - mean) / std) - tf.math.log(std) - 0.5 * math.log(2 * math.pi)


class ReverseProcess(keras.Model):
    """Two small networks giving p(x_{t-1} | x_t) = N(mean, std), from x_t and
    t / T.

    Args:
        hidden: int. Units in each of the two hidden layers. Defaults to 32.
        steps: int. Diffusion steps T. Defaults to 250.
        beta: float. The forward process's constant beta. Defaults to 0.02.
        seed: int. Seeds the weights and the forward noise. Defaults to 0.
    """

    def __init__(self, hidden=32, steps=TIME_STEPS, beta=BETA, seed=0, **kwargs):
        super().__init__(**kwargs)
        keras.utils.set_random_seed(seed)
        self.steps = steps
        self.beta = beta
        self.seed = seed
        self.mean_network = _network(hidden, positive=False, name="mean")
        self.std_network = _network(hidden, positive=True, name="std")
        self.train_steps = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="train_steps"
        )

    def reverse(self, x, t):
        """Mean and standard deviation of p(x_{t-1} | x_t) at integer times `t`."""
        time = tf.broadcast_to(tf.cast(t, "float32") / self.steps, tf.shape(x))
        inputs = tf.concat([x, time], axis=-1)
        return self.mean_network(inputs), self.std_network(inputs) + 1e-4

    def bound(self, data, seed):
        """The variational bound on -log p(x_0) (eq. 3), per diffusion step:
        -log p(x_T) plus, for every t, log q(x_t | x_{t-1}) - log p(x_{t-1} | x_t)."""
        trajectory = forward_trajectory(data, seed, self.steps, self.beta)
        previous, current = trajectory[:-1], trajectory[1:]
        times = tf.range(1, self.steps + 1, dtype="float32")[:, None, None]
        flat = lambda x: tf.reshape(x, (-1, 1))  # noqa: E731
        time = flat(tf.broadcast_to(times, tf.shape(current)))
        inputs = tf.concat([flat(current), time / self.steps], axis=-1)
        mean, std = self.mean_network(inputs), self.std_network(inputs) + 1e-4
        reverse = _normal_log_prob(flat(previous), mean, std)
        forward = _normal_log_prob(
            flat(current), math.sqrt(1 - self.beta) * flat(previous), math.sqrt(self.beta)
        )
        prior = _normal_log_prob(trajectory[-1], 0.0, 1.0)
        total = -tf.reduce_mean(prior) + tf.reduce_mean(forward - reverse) * self.steps
        return total / (self.steps + 1)

    def train_step(self, data):
        seed = tf.stack([tf.constant(self.seed, "int64"), tf.cast(self.train_steps, "int64")])
        with tf.GradientTape() as tape:
            loss = self.bound(data, seed)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.train_steps.assign_add(1)
        return {"bound": loss}

    def sample(self, count, seed=0):
        """Runs the reverse process from N(0, 1); returns `(count, 1)` samples."""
        rng = np.random.default_rng(seed)
        x = tf.constant(rng.standard_normal((count, 1)), "float32")
        noises = rng.standard_normal((self.steps, count, 1)).astype("float32")
        for t in range(self.steps, 0, -1):
            mean, std = self.reverse(x, t)
            x = mean + (std * noises[t - 1] if t > 1 else 0.0)
        return x.numpy()


def mode_fractions(samples):
    """Fractions of samples left and right of 0: the mixture's two modes."""
    samples = np.asarray(samples).ravel()
    return float(np.mean(samples < 0)), float(np.mean(samples >= 0))


def train_1d(training_steps=1000, data_size=1000, hidden=32, learning_rate=1e-2, seed=0,
             verbose=0):  # fmt: skip
    """Trains a `ReverseProcess` on the mixture as the tutorial does: every
    step uses the whole data set's forward trajectory. Returns `(model, losses)`.

    The learning rate falls from `learning_rate` to 0 along a cosine over the
    run: at a constant 1e-2 the last steps still jump between optima, and
    which one a run ends in changed with the last bits of the arithmetic (seed
    0 ended with 93% of its samples in the left mode with oneDNN's kernels,
    34% without); decayed, seeds 0 to 3 learn both modes with either."""
    data = sample_data(data_size, seed)
    model = ReverseProcess(hidden=hidden, seed=seed)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, training_steps)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-6))
    dataset = without_autotune(tf.data.Dataset.from_tensors(data).repeat())
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["bound"]))
    )
    model.fit(
        dataset, steps_per_epoch=training_steps, epochs=1, verbose=verbose, callbacks=[record],
        shuffle=False,  # a dataset: Keras would warn that it cannot shuffle it
    )  # fmt: skip
    return model, losses
