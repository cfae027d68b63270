"""Guidance: steering a model's denoiser towards a class.

Samplers call a denoiser, `guided_denoise(noisy_images, noise_rates,
signal_rates, guide)`; guidance wraps the model's network in it, as
k-diffusion wraps its denoisers, so that samplers know nothing of classes.
`steering` checks what `generate` and `edit` were asked for and turns it into
the `guide` the compiled sampler carries.

References:
- [Ho & Salimans, 2022 (classifier-free guidance)](https://arxiv.org/abs/2207.12598)
- [Dhariwal & Nichol, 2021 (classifier guidance)](https://arxiv.org/abs/2105.05233)
"""

import numpy as np
from keras import ops


def guided_denoise(model, noisy_images, noise_rates, signal_rates, guide=None):
    """`denoise` with the EMA network, steered as `guide` says.

    `guide` is None (unconditional) or a dict with `class_labels` (int32
    `(batch,)`, or a text model's caption tokens `(batch, words)`),
    `null_labels` (the same shape: the null class, the empty prompt or a
    negative prompt), `guidance_scale` (a float, or None for the plain
    conditional model), `classifier` (a `NoiseClassifier` or None) and
    `classifier_scale`:
    1. Classifier-free guidance (Ho & Salimans 2022, eq. 6): the network
       runs for the labels and for the null labels in one doubled batch, and
       outputs = unconditional + w (conditional - unconditional); w = 1 is
       the conditional model, w = 0 the unconditional one.
    2. Classifier guidance (Dhariwal & Nichol 2021, algorithm 2): the
       predicted noise moves against the classifier's log-probability
       gradient, eps' = eps - s * noise_rate * grad_x log p(y | x_t).
    """
    if guide is None:
        return model.denoise(noisy_images, noise_rates, signal_rates, training=False)
    class_labels = guide["class_labels"]
    conditional = class_labels if model.conditional else None
    if model.conditional and guide["guidance_scale"] is not None:
        batch = ops.shape(noisy_images)[0]
        nulls = guide.get("null_labels")
        nulls = model.null_labels(batch) if nulls is None else nulls
        outputs = model.network_outputs(
            ops.concatenate([noisy_images, noisy_images], axis=0),
            ops.concatenate([noise_rates, noise_rates], axis=0),
            ops.concatenate([class_labels, nulls], axis=0),
        )
        conditional_outputs, unconditional_outputs = outputs[:batch], outputs[batch:]
        outputs = unconditional_outputs + guide["guidance_scale"] * (
            conditional_outputs - unconditional_outputs
        )
    else:
        outputs = model.network_outputs(noisy_images, noise_rates, conditional)
    pred_noises, pred_images = model.split_prediction(
        outputs, noisy_images, noise_rates, signal_rates
    )
    if guide.get("classifier") is not None:
        gradients = guide["classifier"].log_probability_gradients(
            noisy_images, noise_rates, class_labels
        )
        pred_noises = pred_noises - guide["classifier_scale"] * noise_rates * gradients
        pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
    return pred_noises, pred_images


def find_class(class_names, name_or_index):
    """The index of a class given by name or by index (as int or str) among
    `class_names`, or None when it names none of them (the caller says so,
    in its own words)."""
    if isinstance(name_or_index, str) and name_or_index in class_names:
        return class_names.index(name_or_index)
    try:
        index = int(name_or_index)
    except (TypeError, ValueError):
        return None
    return index if 0 <= index < len(class_names) else None


def resolve_labels(model, class_labels, count, classifier):
    """Labels `(count,)` int32 from a name, an index or one per image."""
    if class_labels is None:
        return None
    if isinstance(class_labels, (str, int, np.integer)):
        class_labels = [class_labels] * count
    class_labels = list(np.asarray(class_labels, dtype=object).reshape(-1))
    if len(class_labels) != count:
        raise ValueError(f"got {len(class_labels)} class labels for {count} images")
    if model.num_classes:
        return np.array([model.class_index(c) for c in class_labels], dtype=np.int32)
    # An unconditional model steered by a classifier: the classifier's classes.
    return np.array([classifier.class_index(c) for c in class_labels], dtype=np.int32)


def prompt_tokens(model, prompts, count, what="prompts"):
    """A text model's tokens `(count, words)` of one prompt or one per image."""
    if isinstance(prompts, str):
        prompts = [prompts] * count
    prompts = [str(prompt) for prompt in np.asarray(prompts, dtype=object).reshape(-1)]
    if len(prompts) != count:
        raise ValueError(f"got {len(prompts)} {what} for {count} images")
    return model.text_encoder.tokenize(prompts)


def text_steering(model, count, prompts, negative_prompts, guidance_scale):
    """`steering` for a text-conditional model: the prompts' tokens, and for
    classifier-free guidance the negative prompts' (or the empty prompt's)."""
    if prompts is None:
        if guidance_scale != 1.0 or negative_prompts is not None:
            raise ValueError("guidance_scale and negative prompts need a prompt")
        return dict(labels=None, guidance="none", guidance_scale=guidance_scale)
    labels = prompt_tokens(model, prompts, count)
    nulls = np.zeros_like(labels)
    if negative_prompts is not None:
        nulls = prompt_tokens(model, negative_prompts, count, "negative prompts")
    if guidance_scale == 0.0:
        labels = nulls  # w = 0: the unconditional (or negative) model alone
    kind = "labels" if guidance_scale in (0.0, 1.0) else "cfg"
    return dict(labels=labels, null_labels=nulls, guidance=kind, guidance_scale=guidance_scale)


def steering(model, count, class_labels, guidance_scale, classifier, classifier_scale,
             prompts=None, negative_prompts=None):  # fmt: skip
    """Checks the guidance arguments of `generate` and `edit` and returns
    them as `Sampler.run` takes them: labels, guidance kind and scales."""
    guidance_scale, classifier_scale = float(guidance_scale), float(classifier_scale)
    if not (np.isfinite(guidance_scale) and guidance_scale >= 0.0):
        raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale}")
    if not (np.isfinite(classifier_scale) and classifier_scale >= 0.0):
        raise ValueError(f"classifier_scale must be a number >= 0, got {classifier_scale}")
    if model.text_encoder is not None:
        if class_labels is not None or classifier is not None:
            raise ValueError("this model is text-conditional; give it prompts, not classes")
        return text_steering(model, count, prompts, negative_prompts, guidance_scale)
    if prompts is not None or negative_prompts is not None:
        raise ValueError("prompts need a text-conditional model (train.py --captions)")
    if guidance_scale != 1.0 and not model.num_classes:
        raise ValueError("guidance_scale needs a class-conditional model (train.py --conditional)")
    if guidance_scale != 1.0 and class_labels is None:
        raise ValueError("guidance_scale needs class_labels (a class to guide towards)")
    if class_labels is not None and not model.num_classes and classifier is None:
        raise ValueError(
            "this model is not class-conditional; give a classifier to steer it to a class"
        )
    if classifier is not None and model.autoencoder is not None:
        raise ValueError("classifier guidance works on pixel-space models, not latent ones")
    if classifier is not None:
        if class_labels is None:
            raise ValueError("classifier guidance needs class_labels")
        classifier.check_compatible(model)
    labels = resolve_labels(model, class_labels, count, classifier)
    kind = "none"
    if model.num_classes and labels is not None:
        kind = "labels" if guidance_scale == 1.0 else "cfg"
        if guidance_scale == 0.0 and classifier is None:
            # w = 0 is the unconditional model: one pass for the null class.
            labels = np.full_like(labels, model.null_class)
            kind = "labels"
    return dict(
        labels=labels, guidance=kind, guidance_scale=guidance_scale,
        classifier=classifier, classifier_scale=classifier_scale,
    )  # fmt: skip
