"""The reverse process: from noise (or a noised image) to images, for any denoiser.

`Sampler` compiles the loop of `diffusion_keras.sampling.steps` once per kind of
run and runs it in chunks; a denoiser is what that module says. Inpainting
steps come from `diffusion_keras.sampling.inpainting`; the edits themselves
(start times, masks) from `diffusion_keras.editing`.
"""

import keras
import numpy as np
from keras import ops

from diffusion_keras.sampling.inpainting import inpainting_step
from diffusion_keras.sampling.steps import (
    resample_noises,
    sampling_step,
    step_noises,
    visit_times,
)  # fmt: skip
from diffusion_keras.utils import backend

# -- the compiled loop -------------------------------------------------------


def _edit_specs(spec):
    """The signature of `editing.inpainting_step`'s inputs: known images, masks,
    resampling noises, resample and harmonize."""
    return [spec["images"], spec["images"], spec["noises"], spec["scalar"], spec["scalar"]]


class Sampler:
    """Runs the reverse process of `denoiser` as compiled loops.

    One loop is compiled per kind of run (sampler, stochastic or not, guidance,
    classifier, spacing, editing) and reused (`utils.backend.compile_loop`):
    on TensorFlow a `tf.function` whose batch dimension is None and whose
    step count, eta, times, labels and scales are tensors, so other sizes or
    settings do not retrace it; on JAX the whole loop under `jax.jit` (a
    `fori_loop`), traced again only for a new batch size; on PyTorch eager.
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

    def _variables(self, classifier):
        # What a compiled loop reads: the denoiser's variables (its networks,
        # normalizer, text encoder) and a guiding classifier's.
        def variables():
            found = list(getattr(self.denoiser, "variables", []))
            return found + ([] if classifier is None else list(classifier.variables))

        return variables

    def _compile(self, function, signature, classifier):
        return backend.compile_loop(function, self._variables(classifier), signature)

    def _specs(self):
        shape = tuple(self.denoiser.sample_shape)
        if backend.name() != "tensorflow":
            return shape, None
        import tensorflow as tf

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
                known, mask, renoises, resample, harmonize = edit

            # One loop node for all steps (`fori_loop`: a `tf.while_loop`, or
            # JAX's `lax` loop under `jit`), with no AutoGraph source
            # conversion to go wrong.
            def body(step, images):
                current_images, pred_images = images
                step_noise = ops.take(noises, step, axis=0) if stochastic else None
                if editing:
                    return inpainting_step(
                        denoiser, current_images, pred_images, step, diffusion_steps, sampler,
                        eta if stochastic else 0.0, step_noise, guide, times,
                        known, mask, renoises, resample, harmonize, shape,
                    )  # fmt: skip
                return sampling_step(
                    denoiser, current_images, pred_images, step, diffusion_steps, sampler,
                    eta if stochastic else 0.0, step_noise, guide, times,
                )  # fmt: skip

            _, pred_images = ops.fori_loop(0, diffusion_steps, body, (initial, initial))
            return pred_images

        signature = None
        if spec is not None:
            signature = [
                spec["images"], spec["scalar"], spec["real"], spec["noises"], spec["times"],
                spec["conditions"], spec["conditions"], spec["real"], spec["real"],
            ]  # fmt: skip
            if editing:
                signature += _edit_specs(spec)
        return self._compile(loop, signature, classifier)

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

        signature = None
        if spec is not None:
            signature = [
                spec["images"], spec["images"], spec["scalar"], spec["scalar"], spec["real"],
                spec["images"], spec["times"], spec["conditions"], spec["conditions"],
                spec["real"], spec["real"],
            ]  # fmt: skip
            if editing:
                signature += _edit_specs(spec)
        return self._compile(one_step, signature, classifier)

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
        `"none"`, `"labels"` (the conditional model) or `"cfg"`. `progress` is
        a bool (a Keras progress bar) or a callable `report(steps_done,
        steps_total)` called after each step. `times` overrides the
        times `spacing` gives (editing starts later). `edit` is None or a dict
        of numpy arrays `known` and `mask` `(n, *sample_shape)` and ints
        `resample` and `harmonize` (`diffusion_keras.editing.edits`). The
        result does not depend on `batch_size` (under JAX, whose loop is
        compiled per batch size, beyond float32 rounding: 1e-5).
        """
        initial = np.asarray(initial, dtype="float32")
        count = len(initial)
        shape = tuple(self.denoiser.sample_shape)
        # One DDIM step ends at its clean-image estimate: no fresh noise
        # enters it, so none is drawn (a 1-step student's default eta).
        one_ddim_step = sampler == "ddim" and int(diffusion_steps) == 1 and edit is None
        stochastic = float(eta) > 0.0 and not one_ddim_step
        label_shape = tuple(getattr(self.denoiser, "label_shape", ()))
        if labels is None:
            labels = np.zeros((count,) + label_shape, np.int32)
        if null_labels is None:
            null_labels = (
                ops.convert_to_numpy(self.denoiser.null_labels(count))
                if getattr(self.denoiser, "conditional", False)
                else np.zeros((count,) + label_shape, np.int32)
            )
        labels = np.asarray(labels, np.int32)
        null_labels = np.asarray(null_labels, np.int32)
        guide_args = (np.float32(guidance_scale), np.float32(classifier_scale))
        if times is None:
            times = visit_times(self.denoiser, diffusion_steps, spacing)
        else:
            times, spacing = np.asarray(times, np.float32), "given"
        times = np.zeros((1,), np.float32) if times is None else times
        editing = None if edit is None else "inpaint"
        chunks = range(0, count, batch_size)
        bar = None
        if callable(progress):
            bar = _Reporter(progress, len(chunks) * diffusion_steps)
        elif progress:
            bar = keras.utils.Progbar(len(chunks) * diffusion_steps, unit_name="step")
        steps_arg, eta_arg = np.int32(diffusion_steps), np.float32(eta)
        outputs = []
        for start in chunks:
            chunk = initial[start : start + batch_size]
            size = len(chunk)
            indices = range(start, start + size)
            noises = (
                step_noises(shape, seed, indices, diffusion_steps)
                if stochastic
                else np.zeros((1, size) + shape, np.float32)
            )
            edit_args = ()
            if edit is not None:
                resample = int(edit["resample"])
                edit_args = (
                    edit["known"][start : start + size],
                    edit["mask"][start : start + size],
                    resample_noises(shape, seed, indices, diffusion_steps, resample),
                    np.int32(resample),
                    np.int32(int(edit["harmonize"])),
                )
            common = (times, labels[start : start + size], null_labels[start : start + size],
                      *guide_args)  # fmt: skip
            if bar is None:
                function = self._function(
                    "loop", sampler, stochastic, guidance, classifier, spacing, editing
                )
                pred_images = function(
                    *_tensors(chunk, steps_arg, eta_arg, noises, *common, *edit_args)
                )
            else:
                function = self._function(
                    "step", sampler, stochastic, guidance, classifier, spacing, editing
                )
                current_images = pred_images = ops.convert_to_tensor(chunk)
                for step in range(diffusion_steps):
                    noise = noises[step] if stochastic else noises[0]
                    current_images, pred_images = function(
                        current_images, pred_images,
                        *_tensors(np.int32(step), steps_arg, eta_arg, noise, *common, *edit_args),
                    )  # fmt: skip
                    bar.add(1)
            outputs.append(ops.convert_to_numpy(pred_images))
        return np.concatenate(outputs, axis=0)


class _Reporter:
    """A progress bar that calls `report(done, total)` after each step (the web page's)."""

    def __init__(self, report, total):
        self.report, self.total, self.done = report, total, 0

    def add(self, steps):
        self.done += steps
        self.report(self.done, self.total)


def _tensors(*arrays):
    """The loop's numpy arguments as this backend's tensors."""
    return [ops.convert_to_tensor(a) for a in arrays]
