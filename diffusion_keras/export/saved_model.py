"""A trained model as a TensorFlow SavedModel that generates images end to end.

`export_saved_model(model, directory)` writes a SavedModel whose serving
signatures run the whole reverse process in one graph: the seeded noise
(`graph_normal`, the same numbers as `sampling.noise` draws in numpy), the
compiled sampling loop of `sampling.loop.Sampler` with the model's weights,
and the conversion to uint8 pixels of `utils.images.to_uint8`. Loading it
needs TensorFlow alone, not this package:

    generate = tf.saved_model.load(DIR).signatures["generate"]
    images = generate(seed=tf.constant(0, tf.int64),
                      num_images=tf.constant(4, tf.int32))["images"]

Signatures (`endpoints`):

- `generate(seed: int64, num_images: int32) -> images: uint8 [n, h, w, c]`:
  what `generate.py MODEL --seed S --num-images N` writes, with the sampler,
  steps, spacing and eta baked in (`generate.py`'s defaults unless chosen).
- `generate_from_noise(initial_noise, step_noises)`: the same loop from
  noise given (what LiteRT and ONNX take, `export.portable`).
- a class-conditional model also has `generate_class(seed, num_images,
  class_index: int32, guidance_scale: float32)`: `--class C
  --guidance-scale W` (1 is the conditional model, 0 the unconditional one),
  and `generate_class_from_noise`.
- a text model also has `generate_prompt(seed, num_images, prompt: string,
  negative_prompt: string, guidance_scale: float32)`: `--prompt P
  --negative-prompt N --guidance-scale W`, the text tokenized in the graph
  ("" is the empty prompt).
"""

import json
import math
import os
import shutil

import keras
import numpy as np

from diffusion_keras.config.sampling import default_recipe, sampling_settings
from diffusion_keras.export import portable
from diffusion_keras.export.edits import EditGraph, checked
from diffusion_keras.sampling import noise
from diffusion_keras.sampling.rules import validate_sampler, validate_spacing
from diffusion_keras.sampling.steps import visit_times
from diffusion_keras.utils import backend

SIGNATURES = ("generate", "generate_class")


def graph_normal(key, stream_number, count, sample_shape):
    """`noise.normal(seed, stream_number, (count, *sample_shape))` in a
    TensorFlow graph: Philox's words from TensorFlow's stateless op (the
    same counter layout), Box-Muller in float64 rounded to float32, as numpy
    does it. `key` is the seed's bits, uint64 `(1,)`; `count` a tensor."""
    import tensorflow as tf

    per_image = int(np.prod(sample_shape))
    size = tf.cast(count, tf.int64) * per_image
    blocks = (size + 3) // 4
    words = tf.raw_ops.StatelessRandomUniformFullIntV2(
        shape=tf.reshape(blocks * 4, [1]), key=key,
        counter=tf.constant([0, stream_number], tf.uint64), alg=1, dtype=tf.uint32,
    )  # fmt: skip
    pairs = tf.reshape(tf.cast(words, tf.float64), [-1, 2])
    radius = tf.sqrt(-2.0 * tf.math.log((pairs[:, 0] + 0.5) * 2.0**-32))
    angle = (2.0 * math.pi * 2.0**-32) * pairs[:, 1]
    normals = tf.reshape(tf.stack([radius * tf.cos(angle), radius * tf.sin(angle)], 1), [-1])
    shape = tf.concat([tf.reshape(tf.cast(count, tf.int32), [1]), list(sample_shape)], 0)
    return tf.reshape(tf.cast(normals[:size], tf.float32), shape)


def graph_uint8(images):
    """`utils.images.to_uint8` in a graph: clip, scale, round half to even."""
    import tensorflow as tf

    images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0) * 255.0
    return tf.cast(tf.round(images), tf.uint8)


class _Graph:
    """The pieces of one export: the model and its baked-in sampling."""

    def __init__(self, model, sampler, diffusion_steps, spacing, eta):
        validate_sampler(sampler, eta)
        validate_spacing(spacing)
        if int(diffusion_steps) < 1:
            raise ValueError(f"diffusion_steps must be >= 1, got {diffusion_steps}")
        self.model, self.sampler, self.spacing = model, sampler, spacing
        self.steps, self.eta = int(diffusion_steps), float(eta)
        self.stochastic = self.eta > 0.0
        self.shape = tuple(int(d) for d in model.sample_shape)
        times = visit_times(model, self.steps, spacing)
        self.times = np.zeros((1,), np.float32) if times is None else np.asarray(times, "float32")

    def to_uint8(self, images):
        return graph_uint8(images)

    def noise(self, seed, num_images):
        """The noise `generate` draws for `seed`: the initial noise, and each
        step's fresh noise (one row of zeros, unread, for a deterministic
        sampler)."""
        import tensorflow as tf

        key = tf.bitcast(tf.reshape(tf.cast(seed, tf.int64), [1]), tf.uint64)
        initial = graph_normal(key, noise.stream("initial"), num_images, self.shape)
        if not self.stochastic:
            return initial, tf.zeros(tf.concat([[1, num_images], list(self.shape)], 0))
        return initial, tf.stack([
            graph_normal(key, noise.stream("step", step), num_images, self.shape)
            for step in range(self.steps)
        ])  # fmt: skip

    @staticmethod
    def _count(num_images):
        """`num_images` as int32, once checked to be at least 1."""
        import tensorflow as tf

        count = tf.convert_to_tensor(num_images, tf.int32)
        return checked(count, tf.debugging.assert_positive(count, "num_images must be >= 1"))

    @staticmethod
    def _guidance(guidance_scale):
        """`guidance_scale`, once checked to be at least 0."""
        import tensorflow as tf

        return checked(guidance_scale, tf.debugging.assert_greater_equal(
            guidance_scale, 0.0, "guidance_scale must be >= 0"))  # fmt: skip

    def run(self, seed, num_images):
        """`generate(num_images, seed=seed)`."""
        return self.run_from_noise(*self.noise(seed, self._count(num_images)))

    def run_from_noise(self, initial, noises, labels=None, nulls=None, guidance="none",
                       scale=1.0):  # fmt: skip
        """The loop from given noise: `initial` `(n, *sample_shape)` and, for a
        stochastic sampler, `noises` `(steps, n, *sample_shape)` (else one
        row, unread): the noise `sampling.noise` draws for a seed."""
        images = self.model.space.denormalize(self.samples(initial, noises, labels, nulls,
                                                           guidance, scale))  # fmt: skip
        if self.model.autoencoder is not None:
            images = self.model.autoencoder.decode(images)
        return {"images": graph_uint8(images)}

    def samples(self, initial, noises, labels=None, nulls=None, guidance="none", scale=1.0,
                times=None, edit=None):  # fmt: skip
        """The compiled loop of `Sampler.run` from `initial`, still normalised:
        at the baked-in times, or at `times` given (an edit's), and with
        `edit`, the inpainting loop's `(known, masks, renoises, resample,
        harmonize)`."""
        import tensorflow as tf

        num_images = tf.shape(initial)[0]
        label_shape = tuple(getattr(self.model, "label_shape", ()))
        zeros = tf.zeros(tf.concat([[num_images], tf.constant(label_shape, tf.int32)], 0), tf.int32)
        labels = zeros if labels is None else labels
        nulls = zeros if nulls is None else nulls
        spacing = self.spacing if times is None else "given"
        times = tf.constant(self.times) if times is None else times
        loop = self.model.generator.sampler._function(
            "loop", self.sampler, self.stochastic, guidance, None, spacing,
            None if edit is None else "inpaint",
        )  # fmt: skip
        return loop(
            initial, tf.constant(self.steps, tf.int32), tf.constant(self.eta, tf.float32), noises,
            times, labels, nulls, tf.cast(scale, tf.float32), tf.constant(1.0, tf.float32),
            *(edit or ()),
        )  # fmt: skip

    def run_class(self, seed, num_images, class_index, guidance_scale):
        """`generate(class_labels=c, guidance_scale=w)` from a seed, its
        inputs checked (`run_class_from_noise`)."""
        import tensorflow as tf

        count = self._count(num_images)
        classes = self.model.num_classes
        class_index = checked(
            class_index,
            tf.debugging.assert_less(class_index, classes, f"class_index must be < {classes}"),
            tf.debugging.assert_non_negative(class_index, "class_index must be >= 0"),
        )  # fmt: skip
        guidance_scale = self._guidance(guidance_scale)
        initial, noises = self.noise(seed, count)
        return self.run_class_from_noise(initial, noises, class_index, guidance_scale)

    def run_class_from_noise(self, initial, noises, class_index, guidance_scale):
        """`generate(class_labels=c, guidance_scale=w)` from given noise: w = 1
        the conditional model, 0 the unconditional one (the null class), else
        classifier-free guidance; the three paths `guidance.steering` takes."""
        import tensorflow as tf

        count = tf.shape(initial)[0]
        labels = tf.fill([count], tf.cast(class_index, tf.int32))
        nulls = tf.cast(self.model.null_labels(count), tf.int32)
        return self.run_guided(initial, noises, labels, nulls, guidance_scale)

    def run_guided(self, initial, noises, labels, nulls, guidance_scale):
        """The loop steered by `labels` against `nulls` at weight w: w = 1 the
        labels alone, w = 0 the nulls alone, else classifier-free guidance
        (the paths of `guidance.steering` and `guidance.text_steering`)."""
        import tensorflow as tf

        scale = tf.cast(guidance_scale, tf.float32)

        def run(labels, guidance):
            return self.run_from_noise(initial, noises, labels, nulls, guidance, scale)

        return tf.case(
            [(tf.equal(scale, 1.0), lambda: run(labels, "labels")),
             (tf.equal(scale, 0.0), lambda: run(nulls, "labels"))],
            default=lambda: run(labels, "cfg"), exclusive=True,
        )  # fmt: skip

    def run_prompt(self, seed, num_images, prompt, negative_prompt, guidance_scale):
        """`generate(prompts=p, negative_prompts=n, guidance_scale=w)` of a
        text model, the text tokenized in the graph (the encoder's own
        `TextVectorization`); "" is the empty prompt. The three paths of
        `guidance.text_steering`."""
        import tensorflow as tf

        count = self._count(num_images)
        guidance_scale = self._guidance(guidance_scale)
        initial, noises = self.noise(seed, count)
        tokenizer = self.model.text_encoder.tokenizer

        def tokens(text):
            return tf.tile(tf.cast(tokenizer(tf.reshape(text, [1])), tf.int32), [count, 1])

        return self.run_guided(initial, noises, tokens(prompt), tokens(negative_prompt),
                               guidance_scale)  # fmt: skip


def endpoints(graph, edits=None):
    """`{signature name: (function, input specs)}` of an export of `graph`'s
    model: from a seed, and from given noise (what LiteRT and ONNX take);
    and `edits`' signatures (`{name: export.edits.EditGraph}`)."""
    import tensorflow as tf

    seed = [tf.TensorSpec((), tf.int64, "seed"), tf.TensorSpec((), tf.int32, "num_images")]
    noise_specs = [tf.TensorSpec((None, *graph.shape), tf.float32, "initial_noise"),
                   tf.TensorSpec((None, None, *graph.shape), tf.float32, "step_noises")]
    found = {
        "generate": (lambda seed, num_images: graph.run(seed, num_images), seed),
        "generate_from_noise": (lambda initial_noise, step_noises: graph.run_from_noise(
            initial_noise, step_noises), noise_specs),
    }  # fmt: skip
    if graph.model.num_classes:
        steer = [tf.TensorSpec((), tf.int32, "class_index"),
                 tf.TensorSpec((), tf.float32, "guidance_scale")]  # fmt: skip
        found["generate_class"] = (graph.run_class, seed + steer)
        found["generate_class_from_noise"] = (graph.run_class_from_noise, noise_specs + steer)
    if graph.model.text_encoder is not None:
        text = [tf.TensorSpec((), tf.string, "prompt"),
                tf.TensorSpec((), tf.string, "negative_prompt"),
                tf.TensorSpec((), tf.float32, "guidance_scale")]  # fmt: skip
        found["generate_prompt"] = (graph.run_prompt, seed + text)
    for name, edit in (edits or {}).items():
        found[name] = edit.endpoint()
    return found


def edit_graphs(model, graph, image_to_image=None, inpaint=None):
    """`{signature name: EditGraph}` of a pixel model that is not
    text-conditional (`edit`'s kind): image-to-image sampled as `graph` but
    deterministic, inpainting with the `inpaint` recipe, unless the settings
    are given (dicts of sampler, diffusion_steps, spacing, eta)."""
    if model.autoencoder is not None or model.text_encoder is not None:
        return {}
    if image_to_image is None:
        image_to_image = dict(sampler=graph.sampler, diffusion_steps=graph.steps,
                              spacing=graph.spacing, eta=0.0)  # fmt: skip
    inpaint = sampling_settings("inpaint") if inpaint is None else inpaint
    return {"image_to_image": EditGraph(_Graph(model, **image_to_image), masked=False),
            "inpaint": EditGraph(_Graph(model, **inpaint), masked=True)}  # fmt: skip


def export_saved_model(model, directory, sampler=None, diffusion_steps=None, spacing=None,
                       eta=None, litert=False, onnx=False, overwrite=False,
                       image_to_image=None, inpaint=None):  # fmt: skip
    """Writes `model` as a SavedModel into `directory` (see the module's
    docstring for its signatures) and returns the signature names.

    The sampling settings are baked in: `sampler`, `diffusion_steps`,
    `spacing` and `eta`, each None for `generate.py`'s default
    (`config.sampling.SAMPLING_RECIPES`, by `default_recipe` of the model's
    training steps); `generate.py --export` passes its
    own (the model's, for a distilled student). A pixel model that
    is not text-conditional also gets `image_to_image` and `inpaint`
    (`export.edits`), sampled as `image_to_image` and `inpaint` say (dicts
    of sampler, diffusion_steps, spacing and eta; None: as `generate.py`
    edits). With `litert` and `onnx`, `generate.tflite` and
    `generate.onnx`/`unet.onnx` go beside it (`export.portable`), with
    `noise.py`. `directory` must not exist unless `overwrite`; it appears
    only when everything is written."""

    backend.require_tensorflow("exporting a SavedModel")
    if os.path.exists(directory) and not overwrite:
        raise ValueError(f"{directory} exists; choose a new folder for the export")
    if not int(model.normalizer_adapted.numpy()):
        raise ValueError("this model's normalizer was never adapted; it has not been trained")
    policy = model.dtype_policy.name
    if (litert or onnx) and policy != "float32":
        raise ValueError(f"LiteRT and ONNX have no {policy} convolutions: export a float32 "
                         "model for them (generate.py --precision float32)")  # fmt: skip
    chosen = sampling_settings(default_recipe(int(model.train_steps.numpy())), sampler=sampler,
                               diffusion_steps=diffusion_steps, spacing=spacing,
                               eta=eta)  # fmt: skip
    if onnx and chosen["sampler"] == "heun":
        # Its second evaluation is skipped in the last step by a conditional,
        # which tf2onnx makes an If around convolutions that onnxruntime rejects.
        raise ValueError("ONNX export takes the ddim and dpmpp_2m samplers, not heun "
                         "(onnxruntime rejects its conditional step): give --recipe default "
                         "or another --sampler, or leave out --onnx")  # fmt: skip
    graph = _Graph(model, chosen["sampler"], chosen["diffusion_steps"], chosen["spacing"],
                   chosen["eta"])  # fmt: skip
    archive = keras.export.ExportArchive()
    archive.track(model)
    edits = edit_graphs(model, graph, image_to_image, inpaint)
    found = endpoints(graph, edits)
    for name, (function, specs) in found.items():
        archive.add_endpoint(name, function, specs)
    partial = directory.rstrip(os.sep) + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)
    try:
        archive.write_out(partial, verbose=False)
        _write_settings(partial, model, graph, edits)
        portable.write_noise_module(partial)
        if litert:
            portable.write_litert(partial, os.path.join(partial, "generate.tflite"), list(found))
        if onnx:
            portable.write_onnx(graph, partial, found)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written is left
        raise
    if os.path.exists(directory):  # overwrite
        shutil.rmtree(directory)
    os.replace(partial, directory)
    return list(found)


def _write_settings(directory, model, graph, edits):
    """`DIR/generation.json`: what the signatures bake in, for people and tools."""
    settings = dict(
        sampler=graph.sampler, diffusion_steps=graph.steps, spacing=graph.spacing, eta=graph.eta,
        image_size=int(model.image_size), channels=int(model.channels),
        class_names=list(model.class_names or []), noise="philox4x32-10, box-muller float64",
    )  # fmt: skip
    settings.update({name: edit.settings() for name, edit in edits.items()})
    with open(os.path.join(directory, "generation.json"), "w") as handle:
        json.dump(settings, handle, indent=2)
