"""The book's way, written from its chapter 8 notebook, as the benchmark baseline.

`BookDiffusionModel` trains with the book's `train_step` (fixed batch size,
per-variable EMA assignments, no warm-up) and samples with the book's Python
loop that calls the EMA network eagerly once per step. It uses this package's
U-Net builder only because the book's `Lambda` embedding no longer builds in
Keras 3; the network is the same.
"""

import keras
import tensorflow as tf

from diffusion_keras.diffusion.schedules import offset_cosine_schedule
from diffusion_keras.nn.unet import build_unet


class BookDiffusionModel(keras.Model):
    def __init__(self, image_size=64, batch_size=64, ema=0.999):
        super().__init__()
        self.image_size = image_size
        self.batch_size = batch_size
        self.ema = ema
        self.normalizer = keras.layers.Normalization()
        self.network = build_unet(image_size, batch_norm="keras")  # Keras 3 BatchNormalization
        self.ema_network = build_unet(image_size, batch_norm="keras")  # clone_model: new weights
        self.noise_loss_tracker = keras.metrics.Mean(name="n_loss")

    @property
    def metrics(self):
        return [self.noise_loss_tracker]

    def denormalize(self, images):
        images = self.normalizer.mean + images * self.normalizer.variance**0.5
        return tf.clip_by_value(images, 0.0, 1.0)

    def denoise(self, noisy_images, noise_rates, signal_rates, training):
        network = self.network if training else self.ema_network
        pred_noises = network([noisy_images, noise_rates**2], training=training)
        pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
        return pred_noises, pred_images

    def reverse_diffusion(self, initial_noise, diffusion_steps):
        num_images = initial_noise.shape[0]
        step_size = 1.0 / diffusion_steps
        current_images = initial_noise
        for step in range(diffusion_steps):
            diffusion_times = tf.ones((num_images, 1, 1, 1)) - step * step_size
            noise_rates, signal_rates = offset_cosine_schedule(diffusion_times)
            pred_noises, pred_images = self.denoise(
                current_images, noise_rates, signal_rates, training=False
            )
            next_diffusion_times = diffusion_times - step_size
            next_noise_rates, next_signal_rates = offset_cosine_schedule(next_diffusion_times)
            current_images = next_signal_rates * pred_images + next_noise_rates * pred_noises
        return pred_images

    def generate(self, num_images, diffusion_steps, initial_noise=None):
        if initial_noise is None:
            initial_noise = tf.random.normal(
                shape=(num_images, self.image_size, self.image_size, 3)
            )
        return self.denormalize(self.reverse_diffusion(initial_noise, diffusion_steps))

    def train_step(self, images):
        images = self.normalizer(images, training=True)
        shape = (self.batch_size, self.image_size, self.image_size, 3)
        noises = tf.random.normal(shape=shape)
        diffusion_times = tf.random.uniform(shape=(self.batch_size, 1, 1, 1))
        noise_rates, signal_rates = offset_cosine_schedule(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        with tf.GradientTape() as tape:
            pred_noises, _ = self.denoise(noisy_images, noise_rates, signal_rates, training=True)
            noise_loss = tf.reduce_mean(tf.abs(noises - pred_noises))
        gradients = tape.gradient(noise_loss, self.network.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.network.trainable_weights))
        self.noise_loss_tracker.update_state(noise_loss)
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(self.ema * ema_weight + (1 - self.ema) * weight)
        return {m.name: m.result() for m in self.metrics}
