"""The reverse process: from noise (or a noised image) to images, for any denoiser.

A *denoiser* is anything with
- `guided_denoise(noisy_images, noise_rates, signal_rates, guide)` returning
  `(pred_noises, pred_images)` in its own normalised space,
- `diffusion_schedule(diffusion_times)` returning `(noise_rates, signal_rates)`,
- `sample_shape`, the shape of one sample `(height, width, channels)`.

`DiffusionModel` is one (pixels); a latent model is another. This module
holds the sampling step that every sampler shares (`sampling_step`), the
eager loop the book writes (`reverse_diffusion`), the seeded noise streams, and
`Sampler`, which compiles the loop once per kind of run and runs it in chunks.
The update rules themselves are in `diffusion_keras.samplers`; editing (start
times, masks, resampling) in `diffusion_keras.editing`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from diffusion_keras.samplers import (
    ddim_update,
    dpmpp_2m_update,
    log_snrs,
    sampling_times,
)


def sampling_step(
    denoiser, current_images, pred_images, step, diffusion_steps, sampler="ddim", eta=0.0,
    step_noises=None, guide=None, times=None,
):  # fmt: skip
    """One step of `sampler` from step `step` of `diffusion_steps`.

    `pred_images` is the previous step's clean-image estimate (used by the
    multistep `dpmpp_2m`). `guide` steers the prediction (see
    `DiffusionModel.guided_denoise`). `times` `(diffusion_steps + 1,)` are the
    diffusion times to visit (`samplers.sampling_times`); None is the book's
    uniform steps. Returns `(next_images, pred_images)`.
    """
    batch_size = ops.shape(current_images)[0]
    ones = ops.ones((batch_size, 1, 1, 1))
    if times is None:
        step_size = 1.0 / ops.cast(diffusion_steps, "float32")
        diffusion_times = ones - ops.cast(step, "float32") * step_size
        next_times = diffusion_times - step_size
        previous_times = diffusion_times + step_size
    else:
        step = ops.cast(step, "int32")
        time = ops.take(times, step)
        next_time = ops.take(times, step + 1)
        # Before the first step, a time as far back as the next is ahead
        # (only the multistep solver looks, and not at its first step).
        previous_time = ops.where(
            step > 0, ops.take(times, ops.maximum(step - 1, 0)), 2.0 * time - next_time
        )
        diffusion_times = ones * time
        next_times, previous_times = ones * next_time, ones * previous_time
    schedule = denoiser.diffusion_schedule
    noise_rates, signal_rates = schedule(diffusion_times)
    previous_pred_images = pred_images
    pred_noises, pred_images = denoiser.guided_denoise(
        current_images, noise_rates, signal_rates, guide
    )
    next_noise_rates, next_signal_rates = schedule(next_times)
    if sampler == "ddim":
        next_images = ddim_update(
            pred_noises, pred_images, noise_rates, signal_rates, next_noise_rates,
            next_signal_rates, eta, step_noises,
        )  # fmt: skip
    else:
        previous_noise_rates, previous_signal_rates = schedule(previous_times)
        next_images = dpmpp_2m_update(
            current_images, pred_images, previous_pred_images,
            log_snrs(noise_rates, signal_rates),
            log_snrs(next_noise_rates, next_signal_rates),
            log_snrs(previous_noise_rates, previous_signal_rates),
            noise_rates, next_noise_rates, next_signal_rates,
            first_step=ops.cast(step, "float32") == 0.0,
        )  # fmt: skip
    return next_images, pred_images


def visit_times(denoiser, diffusion_steps, spacing):
    """The times to visit as a tensor, or None for the book's uniform steps
    (computed in the step itself, exactly as the book does)."""
    if spacing == "uniform":
        return None
    return tf.constant(sampling_times(denoiser.diffusion_schedule, diffusion_steps, spacing))


def reverse_diffusion(
    denoiser, initial_noise, diffusion_steps, sampler="ddim", eta=0.0, step_noises=None,
    guide=None, spacing="uniform",
):  # fmt: skip
    """Runs `sampler` from `initial_noise` (normalised space) in
    `diffusion_steps` steps and returns the last predicted images, as the
    book does. Eager, a Python loop; `Sampler` runs a compiled equivalent."""
    current_images = ops.convert_to_tensor(initial_noise, "float32")
    pred_images = current_images
    times = visit_times(denoiser, diffusion_steps, spacing)
    for step in range(diffusion_steps):
        current_images, pred_images = sampling_step(
            denoiser, current_images, pred_images, step, diffusion_steps, sampler, eta,
            None if step_noises is None else step_noises[step], guide, times,
        )  # fmt: skip
    return pred_images


# -- seeded noise ------------------------------------------------------------


def make_noise(sample_shape, num_images, seed=None):
    """Standard normal noise `(num_images, *sample_shape)` from `seed`, drawn
    with numpy, so the same seed gives the same noise on every machine and for
    every batch size."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_images, *sample_shape), dtype=np.float32)


def step_noises(sample_shape, seed, indices, diffusion_steps):
    """Fresh noise for stochastic sampling, `(steps, n, *sample_shape)`, drawn
    per image from (seed, image index), so that it does not depend on the
    batch size."""
    shape = (diffusion_steps, *sample_shape)
    base = np.random.SeedSequence(seed).entropy
    per_image = [
        np.random.default_rng([base, 1, index]).standard_normal(shape, dtype=np.float32)
        for index in indices
    ]
    return tf.constant(np.stack(per_image, axis=1))


def image_keys(seed, indices):
    """One int32 key per image from (seed, image index), for noise drawn
    inside the compiled loop (`keyed_noise`), so that it too does not depend
    on the batch size."""
    base = np.random.SeedSequence(seed).entropy
    keys = [np.random.default_rng([base, 2, index]).integers(2**31 - 1) for index in indices]
    return tf.constant(np.array(keys, dtype=np.int32))


def keyed_noise(keys, counter, sample_shape):
    """Standard normal noise `(n, *sample_shape)`: image i's is a function of
    `keys[i]` and `counter` alone (stateless Philox)."""
    counter = tf.cast(counter, "int32")

    def one(key):
        return tf.random.stateless_normal(sample_shape, tf.stack([key, counter]))

    return tf.map_fn(one, keys, fn_output_signature=tf.float32)


# -- the compiled loop -------------------------------------------------------


def _edit_specs(spec):
    """The signature of `editing.inpainting_step`'s inputs: known images, masks,
    noise keys, resample and harmonize."""
    return [spec["images"], spec["images"], spec["labels"], spec["scalar"], spec["scalar"]]


class Sampler:
    """Runs the reverse process of `denoiser` as compiled TensorFlow loops.

    One loop is traced per kind of run (sampler, stochastic or not, guidance,
    classifier, spacing, editing) and reused: a batch dimension of None and the
    step count, eta, times, labels and scales as tensors mean no retracing for
    other sizes or settings.
    """

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self._compiled = {}

    def _guide(self, guidance, classifier, class_labels, null_labels, guidance_scale,
               classifier_scale):  # fmt: skip
        if guidance == "none" and classifier is None:
            return None
        return {
            "class_labels": class_labels,
            "null_labels": null_labels,
            "guidance_scale": guidance_scale if guidance == "cfg" else None,
            "classifier": classifier,
            "classifier_scale": classifier_scale,
        }

    def _function(self, kind, sampler, stochastic, guidance, classifier, spacing, editing=None):
        classifier_key = None if classifier is None else id(classifier)
        key = (kind, sampler, stochastic, guidance, classifier_key, spacing, editing)
        if key not in self._compiled:
            make = self._loop if kind == "loop" else self._one_step
            function = make(sampler, stochastic, guidance, classifier, spacing, editing)
            # The classifier is kept with its function so that its id stays unique.
            self._compiled[key] = (function, classifier)
        return self._compiled[key][0]

    def _specs(self):
        shape = tuple(self.denoiser.sample_shape)
        return shape, {
            "images": tf.TensorSpec((None,) + shape, "float32"),
            "scalar": tf.TensorSpec((), "int32"),
            "real": tf.TensorSpec((), "float32"),
            "labels": tf.TensorSpec((None,), "int32"),
            # A class per image, or a text model's caption tokens.
            "conditions": tf.TensorSpec(
                (None,) + tuple(getattr(self.denoiser, "label_shape", ())), "int32"
            ),
            "times": tf.TensorSpec((None,), "float32"),
            "noises": tf.TensorSpec((None, None) + shape, "float32"),
        }

    def _loop(self, sampler, stochastic, guidance, classifier, spacing, editing):
        shape, spec = self._specs()
        denoiser = self.denoiser

        def loop(initial, diffusion_steps, eta, noises, times, labels, nulls, scale, cscale,
                 *edit):  # fmt: skip
            guide = self._guide(guidance, classifier, labels, nulls, scale, cscale)
            times = None if spacing == "uniform" else times
            if editing:
                # Editing always visits explicit times (`editing.edit_times`).
                from diffusion_keras.editing import inpainting_step

                known, mask, keys, resample, harmonize = edit

            # An explicit while loop: one graph node for all steps, with no
            # AutoGraph source conversion to go wrong.
            def body(step, current_images, pred_images):
                step_noise = noises[step] if stochastic else None
                if editing:
                    return step + 1, *inpainting_step(
                        denoiser, current_images, pred_images, step, diffusion_steps, sampler,
                        eta if stochastic else 0.0, step_noise, guide, times,
                        known, mask, keys, resample, harmonize, shape,
                    )  # fmt: skip
                next_images, pred_images = sampling_step(
                    denoiser, current_images, pred_images, step, diffusion_steps, sampler,
                    eta if stochastic else 0.0, step_noise, guide, times,
                )  # fmt: skip
                return step + 1, next_images, pred_images

            _, _, pred_images = tf.while_loop(
                lambda step, *_: step < diffusion_steps,
                body,
                (tf.constant(0), initial, initial),
            )
            return pred_images

        signature = [
            spec["images"], spec["scalar"], spec["real"], spec["noises"], spec["times"],
            spec["conditions"], spec["conditions"], spec["real"], spec["real"],
        ]  # fmt: skip
        if editing:
            signature += _edit_specs(spec)
        return tf.function(loop, input_signature=signature, autograph=False)

    def _one_step(self, sampler, stochastic, guidance, classifier, spacing, editing):
        shape, spec = self._specs()
        denoiser = self.denoiser

        def one_step(current_images, pred_images, step, diffusion_steps, eta, step_noise, times,
                     labels, nulls, scale, cscale, *edit):  # fmt: skip
            guide = self._guide(guidance, classifier, labels, nulls, scale, cscale)
            times = None if spacing == "uniform" else times
            step_noise = step_noise if stochastic else None
            eta = eta if stochastic else 0.0
            if editing:
                from diffusion_keras.editing import inpainting_step

                return inpainting_step(
                    denoiser, current_images, pred_images, step, diffusion_steps, sampler,
                    eta, step_noise, guide, times, *edit, shape,
                )  # fmt: skip
            return sampling_step(
                denoiser, current_images, pred_images, step, diffusion_steps, sampler, eta,
                step_noise, guide, times,
            )  # fmt: skip

        signature = [
            spec["images"], spec["images"], spec["scalar"], spec["scalar"], spec["real"],
            spec["images"], spec["times"], spec["conditions"], spec["conditions"], spec["real"],
            spec["real"],
        ]  # fmt: skip
        if editing:
            signature += _edit_specs(spec)
        return tf.function(one_step, input_signature=signature, autograph=False)

    def run(
        self, initial, diffusion_steps, sampler="ddim", eta=0.0, seed=None, labels=None,
        null_labels=None, guidance="none", guidance_scale=1.0, classifier=None,
        classifier_scale=1.0, spacing="uniform", times=None, batch_size=64, progress=False,
        edit=None,
    ):  # fmt: skip
        """The reverse process from `initial` `(n, *sample_shape)` (normalised
        space), in chunks of `batch_size`; returns the last clean-image
        estimates as a numpy array, still normalised.

        `labels` are int32 `(n,)` (or a text model's tokens `(n, words)`, or
        None), `null_labels` the same for classifier-free guidance's other
        half (None: the denoiser's `null_labels`), and `guidance` is
        `"none"`, `"labels"` (the conditional model) or `"cfg"`. `times` overrides the
        times `spacing` gives (editing starts later). `edit` is None or a dict
        of numpy arrays `known` and `mask` `(n, *sample_shape)` and ints
        `resample` and `harmonize` (`diffusion_keras.editing`). The result does not depend on
        `batch_size`.
        """
        initial = np.asarray(initial, dtype="float32")
        count = len(initial)
        shape = tuple(self.denoiser.sample_shape)
        stochastic = float(eta) > 0.0
        label_shape = tuple(getattr(self.denoiser, "label_shape", ()))
        if labels is None:
            labels = np.zeros((count,) + label_shape, np.int32)
        if null_labels is None:
            null_labels = (
                ops.convert_to_numpy(self.denoiser.null_labels(count))
                if getattr(self.denoiser, "conditional", False)
                else np.zeros((count,) + label_shape, np.int32)
            )
        guide_args = (tf.constant(float(guidance_scale), "float32"),
                      tf.constant(float(classifier_scale), "float32"))  # fmt: skip
        if times is None:
            times = visit_times(self.denoiser, diffusion_steps, spacing)
        else:
            times, spacing = tf.constant(np.asarray(times, np.float32)), "given"
        times = tf.zeros((1,)) if times is None else times
        editing = None if edit is None else "inpaint"
        chunks = range(0, count, batch_size)
        bar = None
        if progress:
            bar = keras.utils.Progbar(len(chunks) * diffusion_steps, unit_name="step")
        steps_tensor = tf.constant(diffusion_steps, "int32")
        eta_tensor = tf.constant(float(eta), "float32")
        outputs = []
        for start in chunks:
            chunk = tf.constant(initial[start : start + batch_size])
            size = int(chunk.shape[0])
            indices = range(start, start + size)
            chunk_labels = tf.constant(labels[start : start + size])
            chunk_nulls = tf.constant(np.asarray(null_labels)[start : start + size])
            noises = (
                step_noises(shape, seed, indices, diffusion_steps)
                if stochastic
                else tf.zeros((1, size) + shape)
            )
            edit_args = ()
            if edit is not None:
                edit_args = (
                    tf.constant(edit["known"][start : start + size]),
                    tf.constant(edit["mask"][start : start + size]),
                    image_keys(seed, indices),
                    tf.constant(int(edit["resample"]), "int32"),
                    tf.constant(int(edit["harmonize"]), "int32"),
                )
            if bar is None:
                function = self._function(
                    "loop", sampler, stochastic, guidance, classifier, spacing, editing
                )
                pred_images = function(
                    chunk, steps_tensor, eta_tensor, noises, times, chunk_labels, chunk_nulls,
                    *guide_args, *edit_args,
                )  # fmt: skip
            else:
                function = self._function(
                    "step", sampler, stochastic, guidance, classifier, spacing, editing
                )
                current_images = pred_images = chunk
                for step in range(diffusion_steps):
                    noise = noises[step] if stochastic else noises[0]
                    current_images, pred_images = function(
                        current_images, pred_images, tf.constant(step, "int32"), steps_tensor,
                        eta_tensor, noise, times, chunk_labels, chunk_nulls, *guide_args,
                        *edit_args,
                    )  # fmt: skip
                    bar.add(1)
            outputs.append(ops.convert_to_numpy(pred_images))
        return np.concatenate(outputs, axis=0)
