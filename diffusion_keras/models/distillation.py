"""Progressive distillation (Salimans & Ho 2022): a student that takes one
deterministic DDIM step where its teacher takes two.

A student of `student_steps` = N samples with DDIM over N steps of its
`student_spacing` (`sampling.rules.sampling_times`): uniform ones, from t = 1
to t = 1/N, or `log_snr_span` ones, equal in log-SNR; its teacher samples over
2N steps of the same spacing, each student step halved (or K x N, each step
cut in K, where a round copies a finer DDIM at once). Both spacings keep
every other time when the steps halve, so each round's teacher, itself a
student, is asked only at the times it was taught. `DistillationStep` trains
the student on the teacher's steps:

1. a training image is noised to z_t at one of the student's times t (1 - i/N
   on uniform steps);
2. the teacher (its EMA network, with classifier-free guidance when asked)
   takes DDIM steps t -> t - 1/(2N) -> t - 1/N on uniform steps (or K steps
   of 1/(KN)), landing at z_next, the student's next time;
3. the student's target is the clean image x~ with which one DDIM step from
   z_t lands exactly at z_next (`two_step_target`); at the last step, where
   sampling returns the estimate itself, x~ is the teacher's last estimate;
4. the student's BatchNorm layers keep the teacher's statistics (inference
   mode), so a student starts as exactly its teacher;
5. the loss is the squared error of the student's image estimate against
   x~, weighted by max(SNR, 1) ("truncated SNR", the paper's section 4).

`student_of` makes a student from a teacher: the teacher's settings and EMA
weights (network, normaliser, autoencoder, text encoder), its
`student_steps` and spacing, and optionally another `prediction` (velocity is what the
paper distils: a noise prediction divides by a signal rate near 0 at t = 1).

References:
- [Salimans & Ho, 2022](https://arxiv.org/abs/2202.00512)
- [Meng et al., 2023 (guided distillation)](https://arxiv.org/abs/2210.03142)
"""

import keras
from keras import ops

from diffusion_keras.models.steps import TrainingStep, global_draw, substream
from diffusion_keras.sampling.rules import sampling_times
from diffusion_keras.utils import backend
from diffusion_keras.utils.pixels import images_of


def two_step_target(noisy_images, next_images, signal_rates, noise_rates, next_signal_rates,
                    next_noise_rates):  # fmt: skip
    """The clean image x~ for which one DDIM step from `noisy_images` (z_t)
    lands at `next_images` (z_next): z_next = a' x~ + s' (z_t - a x~) / s, so
    x~ = (z_next - (s'/s) z_t) / (a' - (s'/s) a) (the paper's algorithm 2)."""
    ratio = next_noise_rates / noise_rates
    return (next_images - ratio * noisy_images) / (next_signal_rates - ratio * signal_rates)


def student_times(indices, student_steps, substeps=2, grid=None):
    """`(times, sub_times, next_times)` of student steps `indices` (0 is the
    first, at t = 1): the student's time, the `substeps - 1` times of the
    teacher's DDIM steps between (a list), and the student's next time, on the
    uniform grid of `student_steps` steps, each cut in `substeps`; or, given
    `grid` (the `student_steps` x `substeps` + 1 times of another spacing,
    `spacing_grid`), on that one."""
    if grid is None:
        step_size = 1.0 / student_steps
        times = 1.0 - indices * step_size
        sub_times = [times - k * step_size / substeps for k in range(1, substeps)]
        return times, sub_times, times - step_size
    grid = ops.convert_to_tensor(grid, "float32")
    first = ops.cast(indices, "int32") * substeps

    def at(offset):
        return ops.take(grid, first + offset)

    return at(0), [at(k) for k in range(1, substeps)], at(substeps)


def spacing_grid(model, student_steps, substeps):
    """The times of `model`'s `student_spacing` over `student_steps` x
    `substeps` steps (float32 numpy), or None for uniform ones
    (`student_times` computes those, as the book's sampler does)."""
    if model.student_spacing == "uniform":
        return None
    return sampling_times(model.diffusion_schedule, student_steps * substeps,
                          model.student_spacing)  # fmt: skip


def teacher_guide(teacher, labels, guidance_scale):
    """The `guide` of `sampling.guidance.guided_denoise` for a conditional
    teacher: its labels at `guidance_scale` (None: the plain conditional
    model, for a scale of 1); None for an unconditional one."""
    if labels is None:
        return None
    scale = None if guidance_scale == 1.0 else float(guidance_scale)
    return dict(class_labels=labels, null_labels=None, guidance_scale=scale, classifier=None,
                classifier_scale=0.0)  # fmt: skip


class DistillationStep(TrainingStep):
    """`train_step` for a student: the teacher's DDIM steps as the target.

    `teacher` is a `DiffusionModel` (frozen; its EMA network is used), kept in
    this plain object so that it is not one of the student's weights and not
    in the student's file. `substeps` is the teacher's DDIM steps per student
    step: 2 halves the steps (the paper's rounds); more makes the student copy
    a finer DDIM in one round (5 for a 4-step student copies DDIM 20).
    """

    def __init__(self, model, teacher, substeps=2):
        super().__init__(model)
        self.teacher = teacher
        self.substeps = int(substeps)
        if self.substeps < 2:
            raise ValueError(f"the teacher takes at least 2 steps per student step, not {substeps}")
        if teacher.student_steps and teacher.student_spacing != model.student_spacing:
            raise ValueError(
                f"the teacher is a student of {teacher.student_spacing} steps; its students "
                f"take the same spacing, not {model.student_spacing}"
            )
        # The student's and its teacher's times (None: uniform ones).
        self.grid = spacing_grid(model, model.student_steps, self.substeps)
        if teacher.sample_shape != model.sample_shape:
            raise ValueError(
                f"the teacher's samples are {teacher.sample_shape}, the student's "
                f"{model.sample_shape}"
            )

    def _forward(self, data):
        model, teacher = self.model, self.teacher
        steps = model.student_steps
        seed = self._step_seed(model.train_steps, stream=0)
        images = model.space.normalize(model.space.to_space(images_of(data)))
        local_batch = ops.shape(images)[0]
        noises = global_draw(backend.stateless_normal, local_batch, ops.shape(images)[1:], seed)
        draws = global_draw(backend.stateless_uniform, local_batch, [1, 1, 1], substream(seed, 1))
        indices = ops.minimum(ops.floor(draws * steps), steps - 1)
        times, sub_times, next_times = student_times(indices, steps, self.substeps, self.grid)
        schedule = model.diffusion_schedule
        noise_rates, signal_rates = schedule(times)
        next_noise_rates, next_signal_rates = schedule(next_times)
        noisy_images = signal_rates * images + noise_rates * noises
        labels = self._training_labels(data, seed, local_batch)

        # The teacher's DDIM steps from t to the student's next time.
        guide = teacher_guide(teacher, labels, model.student_guidance)
        current, rates = noisy_images, (noise_rates, signal_rates)
        for sub_time in sub_times:
            pred_noises, pred_images = teacher.guided_denoise(current, *rates, guide)
            rates = schedule(sub_time)
            current = rates[1] * pred_images + rates[0] * pred_noises
        pred_noises, last_images = teacher.guided_denoise(current, *rates, guide)
        next_images = next_signal_rates * last_images + next_noise_rates * pred_noises
        target_images = two_step_target(
            noisy_images, next_images, signal_rates, noise_rates, next_signal_rates,
            next_noise_rates,
        )  # fmt: skip
        # The last step returns its estimate: the teacher's last estimate.
        target_images = ops.where(indices >= steps - 1, last_images, target_images)
        target_images = ops.stop_gradient(target_images)
        target_noises = (noisy_images - signal_rates * target_images) / noise_rates
        targets = model.prediction_targets(target_images, target_noises, noise_rates, signal_rates)

        # The student's BatchNorm keeps the teacher's statistics (inference
        # mode, as fine-tuning does): in training mode its batch statistics
        # move the student away from the teacher it starts as (measured:
        # the 4-step error against the teacher grew 0.024 -> 0.067 in 90
        # steps, where frozen statistics brought it to 0.018).
        inputs = model.network_inputs(noisy_images, noise_rates, labels, training=True)
        outputs = ops.cast(model.network(inputs, training=False), "float32")
        _, student_images = model.split_prediction(outputs, noisy_images, noise_rates, signal_rates)
        weights = ops.maximum(ops.square(signal_rates / noise_rates), 1.0)
        errors = ops.mean(ops.square(student_images - target_images), axis=(1, 2, 3), keepdims=True)
        loss = ops.mean(weights * errors)
        aux = (target_images, target_noises, noisy_images, noise_rates, signal_rates, targets,
               outputs)  # fmt: skip
        return loss, aux


def attach_teacher(student, teacher, substeps=2):
    """Makes `student` train towards `teacher`'s `substeps` DDIM steps per
    student step (`DistillationStep`)."""
    if not student.student_steps:
        raise ValueError("this model is not a student (student_steps is 0)")
    teacher.ema_network.trainable = False
    student.steps = DistillationStep(student, teacher, substeps)
    return student


def student_of(teacher, student_steps, guidance_scale=1.0, prediction=None, seed=None,
               precision=None, spacing=None):  # fmt: skip
    """A new student of `teacher` that samples in `student_steps` steps.

    It has the teacher's settings and sub-models, `prediction` (None: the
    teacher's), the step grid `spacing` (None: a student teacher's, else
    uniform), and starts from the teacher's EMA weights in both of its
    networks; its step counters start at 0. Uncompiled.
    """
    config = teacher.get_config()
    config.update(student_steps=int(student_steps), student_guidance=float(guidance_scale))
    if spacing is not None:
        config["student_spacing"] = spacing
    if prediction is not None:
        config["prediction"] = prediction
    if seed is not None:
        config["seed"] = int(seed)
    if precision is not None:
        config["precision"] = precision
    student = type(teacher).from_config(config)
    weights = teacher.ema_network.get_weights()
    student.network.set_weights(weights)
    student.ema_network.set_weights(weights)
    student.normalizer.set_weights(teacher.normalizer.get_weights())
    student.normalizer_adapted.assign(teacher.normalizer_adapted)
    for name in ("autoencoder", "text_encoder", "ema_text_encoder"):
        mine, theirs = getattr(student, name), getattr(teacher, name)
        if mine is not None and theirs is not None:
            mine.set_weights(theirs.get_weights())
    return student


def is_student(model):
    return isinstance(model, keras.Model) and bool(getattr(model, "student_steps", 0))
