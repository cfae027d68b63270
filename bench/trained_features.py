"""KID features that know the bench's data: a classifier trained on real images.

Random features (`diffusion_keras.metrics.random_features`) see colour and
texture. On the glyphs they are blunt: uniform noise scores 0.080 there
against 0.368 on flowers, so they barely tell a glyph from a smudge of the
right colours. These features are the pooled last layer (128 numbers) of a
small CNN trained on real images the diffusion runs never see, to tell what
the images are about, each image's scaled to length sqrt(128):

- glyphs: which of the 17 characters (`bench/glyphs.py`, images of another
  seed than the bench's data);
- flowers: petal colour (7 classes) and petal count (9 classes), from the
  drawing parameters of flowers 200,000 on (the bench's data is 0-2047).

The trained classifier is kept in `~/.cache/diffusion_keras/bench_features`
(`DIFFUSION_KERAS_CACHE` moves it), so every worker of a bench uses the same
network; its training is seeded, so a fresh cache gives the same features.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = 8192
EPOCHS = 8
FLOWERS_FROM = 200_000


def small_classifier(size, heads, seed):
    """A small CNN on images in [0, 1] with one softmax head per `heads`
    entry (name to class count); its pooled features are the layer
    "features"."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    images = keras.Input((size, size, 3))
    x = images
    for width, stride in ((32, 1), (64, 2), (96, 2), (128, 2)):
        for step in (stride, 1):
            x = layers.Conv2D(width, 3, strides=step, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("swish")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = {name: layers.Dense(classes, name=name)(x) for name, classes in heads.items()}
    model = keras.Model(images, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={name: loss for name in heads},
                  metrics={name: "accuracy" for name in heads})  # fmt: skip
    return model


def labelled_images(dataset, size, count):
    """`(images in [0, 1], {head: labels}, {head: classes})` of real images of
    `dataset` that no bench run trains or measures on."""
    import numpy as np

    if dataset == "glyphs":
        from glyphs import CHARACTERS, glyph_characters, glyph_images

        images = glyph_images(count, size, seed=1)
        return (
            images / 255.0,
            dict(character=glyph_characters(count, seed=1)),
            dict(character=len(CHARACTERS)),
        )
    from diffusion_keras.captions import COLOUR_NAMES, PETAL_COUNTS, flower_attributes
    from diffusion_keras.flowers import render_flower

    indices = range(FLOWERS_FROM, FLOWERS_FROM + count)
    images = np.stack([render_flower(index, size) for index in indices])
    words = [flower_attributes(index) for index in indices]
    labels = dict(
        colour=np.array([COLOUR_NAMES.index(w["colour"]) for w in words]),
        count=np.array([PETAL_COUNTS.index(w["count"]) for w in words]),
    )
    return images, labels, dict(colour=len(COLOUR_NAMES), count=len(PETAL_COUNTS))


def trained_features(dataset, size, seed=0):
    """A `FeatureExtractor` named "trained" for `dataset` ("flowers" or
    "glyphs") at `size`: trains and caches the classifier on first use."""
    import keras
    import numpy as np

    from diffusion_keras.metrics import FeatureExtractor
    from diffusion_keras.precision import cache_dir

    folder = os.path.join(cache_dir(), "bench_features")
    path = os.path.join(folder, f"{dataset}_{size}_{seed}_{IMAGES}_{EPOCHS}.keras")
    if os.path.exists(path):
        classifier = keras.models.load_model(path, compile=False)
    else:
        images, labels, heads = labelled_images(dataset, size, IMAGES)
        classifier = small_classifier(size, heads, seed)
        classifier.fit(images, labels, batch_size=64, epochs=EPOCHS, verbose=0)
        os.makedirs(folder, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.keras"
        classifier.save(temporary)
        os.replace(temporary, path)
    pooled = keras.Model(classifier.input, classifier.get_layer("features").output)
    # Each image's features to length sqrt(128), so that the KID kernel's
    # x.y / 128 is their cosine: bounded, so that a few far-off samples cannot
    # outweigh the rest.
    inputs = keras.Input((size, size, 3))
    unit = keras.layers.UnitNormalization()(pooled(inputs))
    features = keras.Model(inputs, keras.layers.Rescaling(np.sqrt(unit.shape[-1]))(unit))
    return FeatureExtractor(features, "trained", batch_size=256)
