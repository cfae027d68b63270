"""KID features that know the bench's data: a classifier trained on real images.

Random features (`diffusion_keras.metrics.kid.random_features`) see colour and
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
    from diffusion_keras.data.flowers import render_flower

    indices = range(FLOWERS_FROM, FLOWERS_FROM + count)
    images = np.stack([render_flower(index, size) for index in indices])
    return images, flower_labels(indices), flower_heads()


def flower_heads():
    """The flower classifier's heads: petal colour and petal count, to their class counts."""
    from diffusion_keras.data.captions import COLOUR_NAMES, PETAL_COUNTS

    return dict(colour=len(COLOUR_NAMES), count=len(PETAL_COUNTS))


def flower_labels(indices):
    """`{"colour": ..., "count": ...}`: the class index arrays of flowers
    `indices` (their drawn petal colour and petal count)."""
    import numpy as np

    from diffusion_keras.data.captions import COLOUR_NAMES, PETAL_COUNTS, flower_attributes

    words = [flower_attributes(index) for index in indices]
    return dict(
        colour=np.array([COLOUR_NAMES.index(w["colour"]) for w in words]),
        count=np.array([PETAL_COUNTS.index(w["count"]) for w in words]),
    )


def trained_features(dataset, size, seed=0):
    """A `FeatureExtractor` named "trained" for `dataset` ("flowers" or
    "glyphs") at `size`: trains and caches the classifier on first use."""
    import keras
    import numpy as np

    from diffusion_keras.metrics.kid import FeatureExtractor
    from diffusion_keras.utils.precision import cache_dir

    folder = os.path.join(cache_dir(), "bench_features")
    # Flowers' colour labels are the colour their petals show (named by the
    # outer ring's drawn hue before): the name keeps an older cache out.
    name = "flowers_seen" if dataset == "flowers" else dataset
    path = os.path.join(folder, f"{name}_{size}_{seed}_{IMAGES}_{EPOCHS}.keras")
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


def main():
    """KID of held-out real images against known corruptions of them, in the
    random and the trained features: which differences each can see."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from quality import bench_features, kid_between, load, package_first

    package_first()  # the package's CPU setup, before TensorFlow
    import numpy as np
    import tensorflow as tf

    size = args.image_size
    names = ["training images", "uniform noise", "blurred (8x8)", "blurred (16x16)",
             "pixels shuffled", "mirrored"]  # fmt: skip
    for dataset in ("flowers", "glyphs"):
        train_data, held_out = load(dataset, size, args.held_out, args.seed)
        real = held_out.images.astype(np.float32) / 255.0
        rng = np.random.default_rng(args.seed)
        sample = train_data.images[rng.choice(len(train_data), len(real), replace=False)]
        flat = real.reshape(len(real), -1, 3)
        others = [
            sample.astype(np.float32) / 255.0,
            rng.uniform(size=real.shape).astype(np.float32),
            np.asarray(tf.image.resize(tf.image.resize(real, (8, 8)), (size, size))),
            np.asarray(tf.image.resize(tf.image.resize(real, (16, 16)), (size, size))),
            np.stack([image[rng.permutation(len(image))] for image in flat]).reshape(real.shape),
            real[:, :, ::-1],
        ]
        print(f"\n{dataset}, {size}x{size}: KID of {len(real)} held-out images against")
        extractors = {name: bench_features(name, dataset, size) for name in ("random", "trained")}
        print(f"  {'':<18}" + "".join(f"{name:>10}" for name in extractors))
        for name, other in zip(names, others):
            kids = [kid_between(extractor, real, other) for extractor in extractors.values()]
            print(f"  {name:<18}" + "".join(f"{kid:>10.4f}" for kid in kids), flush=True)


if __name__ == "__main__":
    main()
