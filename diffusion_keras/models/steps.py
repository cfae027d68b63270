"""`TrainingStep`: how `DiffusionModel` trains, one batch at a time.

The part of the model with the training and evaluation steps (`model.steps`;
`train_step` and `test_step` hand over to it): noise and diffusion times
drawn statelessly from (seed, step) so that a resumed run repeats an
uninterrupted one, the loss on the prediction (weighted by noise level if
asked), the optimizer step and the EMA update. It reads the model it is
given (its networks, space, schedule, time sampler, loss settings, EMA and
trackers), which holds all the state.
"""

from keras import ops

from diffusion_keras.diffusion.weighting import loss_weights
from diffusion_keras.utils import backend
from diffusion_keras.utils.pixels import images_of


def labels_of(data):
    """The labels of a training batch: `(images, labels)` or a dict with
    `"label"`; None for images alone."""
    if isinstance(data, (tuple, list)) and len(data) > 1:
        return data[1]
    if isinstance(data, dict) and "label" in data:
        return data["label"]
    return None


def global_draw(draw, local_batch, tail_shape, seed):
    """Draws `draw(shape, seed)` for the whole global batch and keeps this
    replica's slice: under a distribution strategy each replica holds a
    slice of the global batch, and every image gets the draw it would get
    on one device."""
    if backend.name() != "tensorflow":
        # JAX's data parallelism hands the step the global batch (sharded);
        # PyTorch trains on one device.
        return draw((local_batch, *tail_shape), seed)
    import tensorflow as tf

    replica = tf.distribute.get_replica_context()
    replicas = 1 if replica is None else replica.num_replicas_in_sync
    replica_id = 0 if replica is None else replica.replica_id_in_sync_group
    start = replica_id * local_batch
    shape = tf.concat([[local_batch * replicas], tf.cast(tail_shape, "int32")], axis=0)
    return draw(shape, seed)[start : start + local_batch]


substream = backend.substream


class TrainingStep:
    """`train_step`, `test_step` and their parts, for a `DiffusionModel`."""

    def __init__(self, model):
        self.model = model

    def _noisy_batch(self, images, seed):
        """Draws noises and diffusion times for a batch and mixes them in."""
        images = self.model.space.normalize(self.model.space.to_space(images_of(images)))
        local_batch = ops.shape(images)[0]
        noises = global_draw(backend.stateless_normal, local_batch, ops.shape(images)[1:], seed)
        diffusion_times = self.model.time_sampler(
            global_draw(backend.stateless_uniform, local_batch, [1, 1, 1], substream(seed, 1))
        )
        noise_rates, signal_rates = self.model.diffusion_schedule(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        return images, noises, noisy_images, noise_rates, signal_rates

    def _training_labels(self, data, seed, local_batch):
        """The batch's labels with `label_dropout` of them set to the null
        class; None for an unconditional model."""
        if not self.model.conditional:
            return None
        labels = labels_of(data)
        if labels is None:
            what = "(images, labels)" if self.model.num_classes else "(images, caption tokens)"
            raise ValueError(f"this model is conditional; train it on {what} batches")
        labels = ops.cast(ops.reshape(labels, (-1,) + self.model.label_shape), "int32")
        draws = global_draw(backend.stateless_uniform, local_batch, [], substream(seed, 2))
        dropped = ops.reshape(
            draws < self.model.label_dropout, (-1,) + (1,) * len(self.model.label_shape)
        )
        return ops.where(dropped, self.model.null_labels(local_batch), labels)

    def _step_seed(self, counter, stream):
        # A stateless seed from (model seed, stream, counter): the same model,
        # seed and step always draw the same noise, so a resumed run repeats an
        # uninterrupted one.
        return backend.step_seed(self.model.seed, stream, counter)

    def _track(self, images, noises, pred_noises, pred_images, targets, outputs):
        self.model.noise_loss_tracker.update_state(self.model.loss_fn(noises, pred_noises))
        self.model.image_loss_tracker.update_state(self.model.loss_fn(images, pred_images))
        if self.model.prediction == "velocity":
            self.model.velocity_loss_tracker.update_state(self.model.loss_fn(targets, outputs))
        return {m.name: m.result() for m in self.model.metrics}

    def training_loss(self, targets, outputs, noise_rates, signal_rates):
        """The loss the optimizer minimises: `loss` on the prediction, each
        image weighted by its noise level as `loss_weighting` says."""
        if self.model.loss_weighting == "none":
            return self.model.loss_fn(targets, outputs)  # the book's, op for op
        errors = targets - outputs
        errors = ops.abs(errors) if self.model.loss_name == "mae" else ops.square(errors)
        weights = loss_weights(
            self.model.loss_weighting,
            noise_rates,
            signal_rates,
            self.model.prediction,
            self.model.min_snr_gamma,
        )
        return ops.mean(weights * ops.mean(errors, axis=(1, 2, 3), keepdims=True))

    def train_step(self, *args):
        """One optimizer step; `args` are what Keras passes to `train_step` on
        this backend (`utils.backend.train_step`)."""
        return backend.train_step(self.model, args, self._forward, self._finish)

    def _forward(self, data):
        seed = self._step_seed(self.model.train_steps, stream=0)
        images, noises, noisy_images, noise_rates, signal_rates = self._noisy_batch(data, seed)
        class_labels = self._training_labels(data, seed, ops.shape(images)[0])
        targets = self.model.prediction_targets(images, noises, noise_rates, signal_rates)
        # 1. Train the network to predict the noise (or the image, or the
        #    velocity) in the noisy images. The optimizer takes the gradient
        #    of this loss with respect to the U-Net's weights (and a jointly
        #    trained text encoder's; frozen sub-models have none), in the
        #    order a loaded model builds its optimizer in.
        outputs = self.model.network_outputs(noisy_images, noise_rates, class_labels, training=True)
        loss = self.training_loss(targets, outputs, noise_rates, signal_rates)
        return loss, (images, noises, noisy_images, noise_rates, signal_rates, targets, outputs)

    def _finish(self, data, loss, aux):
        images, noises, noisy_images, noise_rates, signal_rates, targets, outputs = aux
        # 2. The EMA network follows the trained one, BatchNorm statistics too.
        self.model.ema_updater.update()
        self.model.train_steps.assign_add(1)
        self.model.step_loss_tracker.reset_state()
        self.model.step_loss_tracker.update_state(loss)

        pred_noises, pred_images = self.model.split_prediction(
            outputs, noisy_images, noise_rates, signal_rates
        )
        return self._track(images, noises, pred_noises, pred_images, targets, outputs)

    def test_step(self, *args):
        """One evaluation step (`utils.backend.test_step`)."""
        return backend.test_step(self.model, args, self._evaluate)

    def _evaluate(self, data):
        seed = self._step_seed(self.model.eval_steps, stream=1)
        images, noises, noisy_images, noise_rates, signal_rates = self._noisy_batch(data, seed)
        class_labels = None
        if self.model.conditional and labels_of(data) is not None:
            class_labels = labels_of(data)
        outputs = self.model.network_outputs(
            noisy_images, noise_rates, class_labels, training=False
        )
        self.model.eval_steps.assign_add(1)
        targets = self.model.prediction_targets(images, noises, noise_rates, signal_rates)
        pred_noises, pred_images = self.model.split_prediction(
            outputs, noisy_images, noise_rates, signal_rates
        )
        return self._track(images, noises, pred_noises, pred_images, targets, outputs)
