"""Generation: what a trained `DiffusionModel` does with its denoiser.

`Generator` is the public sampling side of `DiffusionModel` (`model.generator`;
the model's `generate` and `edit` hand over to it): it checks the arguments,
resolves guidance (`diffusion_keras.sampling.guidance`) and hands the model, as
the denoiser, to the sampling engine (`diffusion_keras.sampling.loop.Sampler`),
which works on any denoiser, in pixel or latent space. The eager book-style
loop (`reverse_diffusion`, `ddim_step`) and the seeded noise streams are here too.
"""

import numpy as np

from diffusion_keras.config.sampling import STUDENT_ETA, spacing_for
from diffusion_keras.editing.edits import HARMONIZE, edit
from diffusion_keras.sampling import guidance
from diffusion_keras.sampling import steps as sampling
from diffusion_keras.sampling.loop import Sampler
from diffusion_keras.sampling.rules import validate_sampler, validate_spacing


class Generator:
    """Sampling and editing for a `DiffusionModel`, its denoiser."""

    def __init__(self, model):
        self.model = model
        self._sampler = None

    # -- sampling ------------------------------------------------------------

    @property
    def sampler(self):
        """This model's `sampling.Sampler` (its compiled loops are cached)."""
        if self._sampler is None:
            self._sampler = Sampler(self.model)
        return self._sampler

    def sampling_step(
        self, current_images, pred_images, step, diffusion_steps, sampler="ddim", eta=0.0,
        step_noises=None, guide=None, times=None,
    ):  # fmt: skip
        """One step of `sampler`; see `diffusion_keras.sampling.steps.sampling_step`.
        Returns `(next_images, pred_images)`."""
        return sampling.sampling_step(
            self.model, current_images, pred_images, step, diffusion_steps, sampler, eta,
            step_noises, guide, times,
        )  # fmt: skip

    def ddim_step(self, current_images, step, diffusion_steps):
        """One deterministic DDIM step (eta = 0), as the book's loop takes it.
        Returns `(next_images, pred_images)`."""
        return self.sampling_step(current_images, current_images, step, diffusion_steps)

    def reverse_diffusion(self, initial_noise, diffusion_steps, sampler="ddim", eta=0.0,
                          step_noises=None, guide=None, spacing="uniform"):  # fmt: skip
        """Runs `sampler` from `initial_noise` (normalised space) in
        `diffusion_steps` steps and returns the last predicted images, as the
        book does. Eager, a Python loop; `generate` uses a compiled equivalent.
        `step_noises` `(diffusion_steps, n, size, size, channels)` is needed
        when `eta` > 0; `guide` is as in `guided_denoise`; `spacing` as in
        `generate`."""
        return sampling.reverse_diffusion(
            self.model, initial_noise, diffusion_steps, sampler, eta, step_noises, guide, spacing
        )

    def class_index(self, name_or_index):
        """The label of a class given by name or by index (as int or str)."""
        if not self.model.num_classes:
            raise ValueError("this model is not class-conditional; it takes no class")
        index = guidance.find_class(self.model.class_names, name_or_index)
        if index is None:
            shown = ", ".join(self.model.class_names[:10]) + (
                ", ..." if self.model.num_classes > 10 else ""
            )
            raise ValueError(
                f"unknown class {name_or_index!r}; this model has {self.model.num_classes} "
                f"classes: {shown} (or an index 0..{self.model.num_classes - 1})"
            )
        return index

    def sampling_defaults(self):
        """How this model samples unless told otherwise: a distilled
        student in the steps it was taught (DDIM over its `student_steps`
        on its `student_spacing`) with `STUDENT_ETA` of fresh noise per step, which
        took it nearer held-out real images than the deterministic path
        (`config.sampling.STUDENT_ETA`); any other model as the book does
        (deterministic DDIM, 20 uniform steps)."""
        steps = int(self.model.student_steps)
        if steps:
            return dict(sampler="ddim", diffusion_steps=steps, spacing=self.model.student_spacing,
                        eta=STUDENT_ETA)  # fmt: skip
        return dict(sampler="ddim", diffusion_steps=20, spacing="uniform", eta=0.0)

    def _with_defaults(self, diffusion_steps, sampler, spacing):
        defaults = self.sampling_defaults()
        return (
            defaults["diffusion_steps"] if diffusion_steps is None else diffusion_steps,
            defaults["sampler"] if sampler is None else sampler,
            # A sampler with a spacing of its own (EDM's Heun) brings it.
            spacing_for(sampler, spacing, defaults),
        )

    def generate(
        self,
        num_images=None,
        diffusion_steps=None,
        initial_noise=None,
        seed=None,
        batch_size=64,
        progress=False,
        sampler=None,
        eta=None,
        class_labels=None,
        guidance_scale=1.0,
        classifier=None,
        classifier_scale=1.0,
        spacing=None,
        prompts=None,
        negative_prompts=None,
    ):
        """Generates images in [0, 1] as a numpy array `(n, size, size, channels)`.

        `diffusion_steps`, `sampler`, `spacing` and `eta` left as None are
        the model's (`sampling_defaults`): the book's deterministic DDIM over
        20 uniform steps, or a distilled student's own step count with
        `STUDENT_ETA` of fresh noise.

        Args:
            num_images: int. How many images; may be omitted when
                `initial_noise` is given.
            diffusion_steps: int. Sampling steps (network evaluations).
                Defaults to 20 (a student's own steps).
            initial_noise: array or None. Starting noise `(n, size, size,
                channels)`; drawn from `seed` when None.
            seed: int or None. Same seed, same images (the fresh noise of
                `eta` > 0 included).
            batch_size: int. Images denoised at once. The result does not depend
                on it. Defaults to 64.
            progress: bool. Show a progress bar over the diffusion steps; or a
                callable `report(steps_done, steps_total)`, called after each step.
            sampler: str. `"ddim"` (the book's), `"dpmpp_2m"` (second order,
                one network evaluation per step,
                closer to the exact ODE solution in few steps) or `"heun"`
                (EDM's second-order sampler, two evaluations per step but one
                in the last). Defaults to `"ddim"`.
            eta: float in [0, 1]. Fresh noise per step: for `ddim` 0 is
                deterministic DDIM, 1 DDPM-like ancestral sampling; for
                `dpmpp_2m` 1 is SDE-DPM-Solver++(2M); for `heun` the share of
                EDM's largest churn. Defaults to 0 (a student's, with its
                own sampler: `STUDENT_ETA`, 0.5).
            class_labels: a class name or index for every image, or one per
                image; None for unconditional images. A conditional model
                takes its own classes; an unconditional one those of
                `classifier`.
            guidance_scale: float. Classifier-free guidance weight w >= 0 for
                a conditional model: 1 is the conditional model, 0 the
                unconditional one, larger pushes harder towards the class.
                Defaults to 1.
            classifier: a `NoiseClassifier` or None. Steers sampling towards
                `class_labels` with its log-probability gradient.
            classifier_scale: float. Classifier guidance strength s >= 0.
                Defaults to 1.
            spacing: str. Where the steps fall: `"uniform"` in time (the
                book's) or `"log_snr"`, equal steps in log signal-to-noise
                ratio between the same first and last times, which gives
                better images in few steps (docs/results/samplers.md), or
                `"karras"`, EDM's steps equal in sigma^(1/7). Defaults to
                `"uniform"`, or `"karras"` for `heun`.
            prompts: a text-conditional model's prompt for every image, or
                one per image; None (or "") is the empty prompt.
            negative_prompts: what classifier-free guidance steers away from
                (one, or one per image), instead of the empty prompt.
        """
        self._check_adapted()
        diffusion_steps, sampler, spacing = self._with_defaults(diffusion_steps, sampler, spacing)
        if eta is None:
            # The model's eta goes with its sampler, not with another one.
            defaults = self.sampling_defaults()
            eta = defaults["eta"] if sampler == defaults["sampler"] else 0.0
        validate_sampler(sampler, eta)
        validate_spacing(spacing)
        expected = self.model.sample_shape
        if initial_noise is None:
            if num_images is None or int(num_images) < 1:
                raise ValueError(f"num_images must be >= 1, got {num_images}")
            initial_noise = self.make_noise(int(num_images), seed)
        initial_noise = np.asarray(initial_noise, dtype="float32")
        if initial_noise.ndim != 4 or initial_noise.shape[1:] != expected:
            raise ValueError(
                f"initial_noise must have shape (n, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {initial_noise.shape}"
            )
        if num_images is not None and int(num_images) != len(initial_noise):
            raise ValueError(
                f"num_images is {num_images} but initial_noise has {len(initial_noise)} images"
            )
        steering = guidance.steering(
            self.model, len(initial_noise), class_labels, guidance_scale, classifier,
            classifier_scale, prompts, negative_prompts,
        )  # fmt: skip
        diffusion_steps, batch_size = _positive_steps_and_batch(diffusion_steps, batch_size)
        pred_images = self.sampler.run(
            initial_noise, diffusion_steps, sampler, eta, seed, spacing=spacing,
            batch_size=batch_size, progress=progress, **steering,
        )  # fmt: skip
        return self.model.space.from_space(pred_images, batch_size)

    def edit(
        self, images, strength=None, mask=None, noise_level=None, resample=1,
        diffusion_steps=None, seed=None, sampler=None, eta=0.0, spacing=None,
        class_labels=None, guidance_scale=1.0, classifier=None, classifier_scale=1.0,
        batch_size=64, progress=False, prompts=None, negative_prompts=None, harmonize=None,
    ):  # fmt: skip
        """Edits existing images: image-to-image, inpainting or denoising.

        See `diffusion_keras.editing.edits` for what each does and what strength means.

        Args:
            images: floats in [0, 1], `(n, size, size, channels)` (or one image).
            strength: float in (0, 1]. How far along the diffusion path the
                images are noised before sampling: near 0 returns them, 1 is
                plain generation (the images are not used, except where a mask
                keeps them). Defaults to 1 with a `mask`; needed otherwise.
            mask: 0 (keep) / 1 (regenerate), `(size, size)` for every image or
                one per image `(n, size, size[, 1 or channels])`; None edits the
                whole image.
            noise_level: float. Denoise instead: the standard deviation of the
                Gaussian noise already on `images` (in their [0, 1] units).
                Sampling starts at the time with that signal-to-noise ratio;
                with `diffusion_steps=1` it is the network's single estimate.
            resample: int >= 1. With a mask, how often each step is taken
                (RePaint's resampling); the cost grows with it.
            harmonize: int >= 0. With a mask, the sweeps that carry the
                estimate's error at the kept region's border into the
                regenerated one at every step (`editing.harmonic_fill`), so the
                two meet without a seam; 0 turns it off. None: `editing.HARMONIZE`.
            others: `diffusion_steps`, `seed`, `sampler`, `eta`, `spacing`,
                `class_labels`, `guidance_scale`, `classifier`,
                `classifier_scale`, `batch_size`, `progress`, `prompts` and
                `negative_prompts` are as in `generate`. The noise is
                `make_noise(n, seed)`, the same as `generate`'s.

        Returns:
            A numpy array of images in [0, 1]; where `mask` is 0, exactly the input.
        """

        if self.model.autoencoder is not None:
            raise ValueError("editing works on pixel-space models; this one is a latent model")
        diffusion_steps, sampler, spacing = self._with_defaults(diffusion_steps, sampler, spacing)
        return edit(
            self.model, images, strength, mask, noise_level, resample, diffusion_steps, seed,
            sampler, eta, spacing, class_labels, guidance_scale, classifier,
            classifier_scale, batch_size, progress, prompts, negative_prompts,
            harmonize=HARMONIZE if harmonize is None else harmonize,
        )  # fmt: skip

    def _check_adapted(self):
        if not int(self.model.normalizer_adapted.numpy()):
            raise ValueError(
                "this model's normalizer was never adapted, so its images would be "
                "garbage; call model.adapt(images) before training"
            )

    def _step_noises(self, seed, indices, diffusion_steps):
        """Fresh noise for stochastic sampling, `(steps, n, size, size,
        channels)`, drawn per image from (seed, image index), so that it does
        not depend on the batch size."""
        return sampling.step_noises(self.model.sample_shape, seed, indices, diffusion_steps)

    def make_noise(self, num_images, seed=None):
        """Standard normal noise `(num_images, size, size, channels)` from `seed`.

        Drawn with numpy, so the same seed gives the same noise on every
        machine and for every batch size.
        """
        return sampling.make_noise(self.model.sample_shape, num_images, seed)


def _positive_steps_and_batch(diffusion_steps, batch_size):
    if int(diffusion_steps) < 1:
        raise ValueError(f"diffusion_steps must be >= 1, got {diffusion_steps}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(diffusion_steps), int(batch_size)
