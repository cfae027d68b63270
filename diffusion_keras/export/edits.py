"""The editing signatures of an export: image-to-image and inpainting in one graph.

`editing.edits.edit` chooses the times an edit visits in numpy
(`edit_times`: the schedule inverted on a fine grid), which a graph would
have to reproduce bit for bit. An export instead carries them as a table,
one row per strength in hundredths (0.01 to 1), computed by `edit_times`
itself; a strength that is not a whole number of hundredths is refused.
Everything else is `edit`'s arithmetic, in the same order:

- `image_to_image(seed, init_image, strength)`: what `generate.py MODEL
  --init-image IMAGES --strength S --seed SEED` writes: the images noised
  to strength S with the seed's noise and sampled from there; at strength 1
  generation from the seed.
- `inpaint(seed, init_image, mask, strength)`: `--mask` too. `mask` is
  uint8 `[n, h, w, 1]`, black (0) keeps a pixel and white (255) regenerates
  it, as a mask file does (values above 127 count as white); the kept pixels
  are the input's own.

`init_image` is uint8 `[n, h, w, channels]` at the model's size (the
resizing of `generate.py` is Pillow's, outside the graph). Both have their
own baked-in sampling, as `generate.py` samples edits: image-to-image
deterministic (eta 0), inpainting the `inpaint` recipe.
"""

import numpy as np
from keras import ops

from diffusion_keras.editing.edits import HARMONIZE, edit_times, model_zero_time

# Rows of the strength table: strengths 1/100, 2/100, ..., 1.
STRENGTHS = 100


def checked(value, *checks):
    """`value` once `checks` (`tf.debugging` assertions) have passed. A graph
    orders an assertion only among other stateful ops, so an input it refuses
    could otherwise reach a gather or a convolution first and fail there with
    that op's message; what reads `value` waits for the checks."""
    import tensorflow as tf

    with tf.control_dependencies([check for check in checks if check is not None]):
        return tf.identity(value)


class EditGraph:
    """The edits of one export, sampled as `graph` (a `saved_model._Graph`
    with the edit's settings) says."""

    def __init__(self, graph, masked, harmonize=HARMONIZE):
        self.graph, self.masked, self.harmonize = graph, bool(masked), int(harmonize)
        model = graph.model
        schedule = model.diffusion_schedule
        zero_time = model_zero_time(model)
        times = [edit_times(schedule, zero_time, k / STRENGTHS, graph.steps, graph.spacing)
                 for k in range(1, STRENGTHS + 1)]  # fmt: skip
        self.times = np.stack(times).astype(np.float32)
        starts = np.asarray(self.times[:, :1], np.float32)
        rates = [ops.convert_to_numpy(schedule(start)) for start in starts]
        # (noise rate, signal rate) at each strength's start, as `edit` reads them.
        self.rates = np.asarray([[r[0][0], r[1][0]] for r in rates], np.float32)

    def _row(self, strength):
        """The table's row of `strength`, checked: a whole number of hundredths in (0, 1]."""
        import tensorflow as tf

        strength = tf.cast(strength, tf.float32)
        scaled = strength * STRENGTHS
        row = tf.cast(tf.round(scaled), tf.int32)
        message = "strength must be one of 0.01, 0.02, ..., 1 (a whole number of hundredths)"
        return checked(
            row,
            tf.debugging.assert_less_equal(tf.abs(scaled - tf.cast(row, tf.float32)), 1e-3,
                                           message),
            tf.debugging.assert_greater_equal(row, 1, message),
            tf.debugging.assert_less_equal(row, STRENGTHS, message),
        ) - 1  # fmt: skip

    def _images(self, init_image):
        import tensorflow as tf

        shape = self.graph.shape
        init_image = checked(
            init_image,
            tf.debugging.assert_equal(tf.shape(init_image)[1:], tf.constant(shape, tf.int32),
                                      f"init_image must be uint8 [n, {shape[0]}, {shape[1]}, "
                                      f"{shape[2]}], the model's size"),
            tf.debugging.assert_positive(tf.shape(init_image)[0], "init_image holds no images"),
        )  # fmt: skip
        return tf.cast(init_image, tf.float32) / 255.0

    def run(self, seed, init_image, strength, mask=None):
        """The edited images, uint8: `edit(images, strength, mask, seed=seed)`."""
        import tensorflow as tf

        graph, model = self.graph, self.graph.model
        images = self._images(init_image)
        count = tf.shape(images)[0]
        row = self._row(strength)
        initial_noise, noises = graph.noise(seed, count)
        known = model.normalize(images)
        rates = tf.gather(tf.constant(self.rates), row)
        noised = rates[1] * known + rates[0] * initial_noise
        times = tf.gather(tf.constant(self.times), row)
        full = tf.equal(row, STRENGTHS - 1)
        if mask is None:
            # At strength 1 the start is generation's: pure noise at its times.
            samples = tf.cond(
                full, lambda: graph.samples(initial_noise, noises),
                lambda: graph.samples(noised, noises, times=times),
            )  # fmt: skip
            return {"images": graph.to_uint8(model.denormalize(samples))}
        shape = graph.shape
        mask = checked(
            mask,
            tf.debugging.assert_equal(tf.shape(mask), tf.stack([count, shape[0], shape[1], 1]),
                                      f"mask must be uint8 [n, {shape[0]}, {shape[1]}, 1] like "
                                      "init_image"),
        )  # fmt: skip
        regenerate = tf.broadcast_to(mask > 127, tf.shape(images))
        masks = tf.cast(regenerate, tf.float32)
        start = tf.where(full, initial_noise, noised)
        initial = tf.where(regenerate, start, noised)
        edit = (known, masks, tf.zeros(tf.concat([[1, count], list(shape)], 0)),
                tf.constant(1, tf.int32), tf.constant(self.harmonize, tf.int32))  # fmt: skip
        samples = graph.samples(initial, noises, times=times, edit=edit)
        results = tf.where(regenerate, model.denormalize(samples), images)
        return {"images": graph.to_uint8(results)}

    def endpoint(self):
        """`(function, input specs)` of this edit's signature."""
        import tensorflow as tf

        specs = [tf.TensorSpec((), tf.int64, "seed"),
                 tf.TensorSpec((None, *self.graph.shape), tf.uint8, "init_image")]  # fmt: skip
        strength = tf.TensorSpec((), tf.float32, "strength")
        if self.masked:
            mask = tf.TensorSpec((None, *self.graph.shape[:2], 1), tf.uint8, "mask")
            return (lambda seed, init_image, mask, strength: self.run(
                seed, init_image, strength, mask), specs + [mask, strength])  # fmt: skip
        return (lambda seed, init_image, strength: self.run(seed, init_image, strength),
                specs + [strength])  # fmt: skip

    def settings(self):
        """What `generation.json` records of this edit."""
        graph = self.graph
        found = dict(sampler=graph.sampler, diffusion_steps=graph.steps, spacing=graph.spacing,
                     eta=graph.eta, strengths="0.01 to 1 in hundredths")  # fmt: skip
        if self.masked:
            found.update(harmonize=self.harmonize, resample=1)
        return found
