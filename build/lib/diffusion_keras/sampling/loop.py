"""The reverse process: from noise (or a noised image) to images, for any denoiser.

`Sampler` compiles the loop of `diffusion_keras.sampling.steps` once per kind of
run and runs it in chunks; a denoiser is what that module says. Inpainting
steps come from `diffusion_keras.sampling.inpainting`; the edits themselves
(start times, masks) from `diffusion_keras.editing`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from diffusion_keras.sampling.inpainting import inpainting_step
from diffusion_keras.sampling.steps import (
    image_keys,
    sampling_step,
    step_noises,
    visit_times,
)  # fmt: skip

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
        `resample` and `harmonize` (`diffusion_keras.editing.edits`). The result does not depend on
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
