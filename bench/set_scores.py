"""Scores of generated images by a classifier that knows the real ones.

For each bench set (`bench/real_sets.py`) two small classifiers
(`trained_features.small_classifier`) are trained to tell the set's classes
apart, each on its own real images, which no diffusion run trains on:

- the **bench** classifier, trained on seed 100's images, scores against the
  bench's held-out split (seed 1);
- the **check** classifier, trained on seed 200's images with another
  initialisation, scores against a second held-out split (seed 3). It stands
  for an outside check on real data the bench never sees; the benches are
  worth what their ranking of recipes agrees with its ranking.
- the **plain** classifier (seed 300's images, held-out seed 4) is trained on
  the classes alone, without the "not real" class below: a check made the way
  an outside user would make one, which sees what an image is about more
  than how sharp it is.

Each gives three numbers for a set of generated images against real ones:

- `distance`: the Frechet distance between Gaussians fitted to the
  classifier's pooled features (each image's scaled to length sqrt(128)), as
  FID is on Inception's. Held-out real images score near 0.
- `coverage`: how evenly the generated images spread over the classes, as
  exp(entropy of the mean predicted class distribution) over the number of
  classes: 1 when every class is as common as in the (balanced) real data.
- `kid`: KID in the same features.
- `real`: the share of images the classifier takes for real: it is trained
  with one more class, "not real", of real images spoilt as an undertrained
  model spoils them (blurred, noisy, washed out, over-saturated, quarters
  swapped), so that its features see quality as well as class.

Classifiers are cached in `~/.cache/diffusion_keras/bench_features` (moved by
`DIFFUSION_KERAS_CACHE`) and trained seeded, so a fresh cache gives the same
network.
"""

import os

import numpy as np

IMAGES = 8192
EPOCHS = 8
SPLITS = {"bench": dict(images_seed=100, init_seed=0, held_out_seed=1, spoilt=True),
          "check": dict(images_seed=200, init_seed=2, held_out_seed=3, spoilt=True),
          "plain": dict(images_seed=300, init_seed=3, held_out_seed=4, spoilt=False)}  # fmt: skip


def degraded(images, rng):
    """Each image in [0, 1] spoilt in one of the ways an undertrained
    diffusion model spoils them: blurred (2x2 to 8x8 blocks, smoothed),
    noisy, washed out or over-saturated, or its quarters swapped."""
    out = np.empty_like(images)
    size = images.shape[1]
    for index, image in enumerate(images):
        kind = rng.integers(5)
        if kind == 0:
            block = int(rng.choice([2, 4, 8]))
            small = image.reshape(size // block, block, size // block, block, 3).mean((1, 3))
            image = np.repeat(np.repeat(small, block, 0), block, 1)
            image = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)
                     + np.roll(image, 1, (0, 1))) / 4  # fmt: skip
        elif kind == 1:
            image = image + rng.normal(0, rng.uniform(0.04, 0.2), image.shape)
        elif kind == 2:
            mean = image.mean((0, 1), keepdims=True)
            image = mean + (image - mean) * rng.uniform(0.3, 0.6)
        elif kind == 3:
            grey = image.mean(-1, keepdims=True)
            image = grey + (image - grey) * rng.uniform(1.8, 2.6)
        else:
            half = size // 2
            quarters = [image[:half, :half], image[:half, half:], image[half:, :half],
                        image[half:, half:]]  # fmt: skip
            order = rng.permutation(4)
            top = np.concatenate([quarters[order[0]], quarters[order[1]]], 1)
            image = np.concatenate([top, np.concatenate([quarters[order[2]],
                                                         quarters[order[3]]], 1)])  # fmt: skip
        out[index] = np.clip(image, 0, 1)
    return out


def classifier(name, size, role="bench", images=IMAGES, epochs=EPOCHS):
    """The trained classifier of set `name` for `role` ("bench" or "check")."""
    import keras
    from real_sets import class_count, set_images
    from trained_features import small_classifier

    from diffusion_keras.utils.precision import cache_dir

    split = SPLITS[role]
    folder = os.path.join(cache_dir(), "bench_features")
    path = os.path.join(folder, f"{name}_{role}_{size}_{images}_{epochs}.keras")
    classes = class_count(name)
    if os.path.exists(path):
        return keras.models.load_model(path, compile=False)
    real, labels = set_images(name, images, size, seed=split["images_seed"])
    real = real.astype(np.float32) / 255.0
    # A quarter more images, spoilt, make one more class: "not real", so
    # that the features see blur, noise and wrong colours, not only what
    # class an image is.
    rng = np.random.default_rng(split["images_seed"])
    spoilt = degraded(real[: images // 4], rng) if split["spoilt"] else real[:0]
    images_in = np.concatenate([real, spoilt])
    labels_in = np.concatenate([labels, np.full(len(spoilt), classes)])
    order = rng.permutation(len(images_in))
    heads = dict(label=classes + 1 if split["spoilt"] else classes)
    model = small_classifier(size, heads, split["init_seed"])
    model.fit(images_in[order], dict(label=labels_in[order]), batch_size=64, epochs=epochs,
              verbose=0)  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, path)
    return model


def held_out(name, count, size, role="bench"):
    """`(images in [0, 1] float32, labels)`: `role`'s held-out real images."""
    from real_sets import set_images

    images, labels = set_images(name, count, size, seed=SPLITS[role]["held_out_seed"])
    return images.astype(np.float32) / 255.0, labels


class Scorer:
    """Scores images of set `name` against `role`'s held-out real images."""

    def __init__(self, name, size, count, role="bench", classifier_model=None):
        import keras

        self.model = classifier_model or classifier(name, size, role)
        pooled = self.model.get_layer("features").output
        self.net = keras.Model(self.model.input, [pooled, self.model.output["label"]])
        self.real, self.labels = held_out(name, count, size, role)
        self.spoilt = SPLITS[role]["spoilt"]
        self.real_features, real_logits = self.features(self.real)
        self.accuracy = float(np.mean(self.classes(real_logits).argmax(-1) == self.labels))

    def classes(self, logits):
        """The logits of the real classes (without "not real")."""
        return logits[:, :-1] if self.spoilt else logits

    def features(self, images):
        pooled, logits = self.net.predict(np.asarray(images, np.float32), batch_size=256,
                                          verbose=0)  # fmt: skip
        pooled = np.asarray(pooled, np.float64)
        pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True) + 1e-12
        return pooled * np.sqrt(pooled.shape[-1]), np.asarray(logits, np.float64)

    def score(self, images):
        """`{"distance", "coverage", "kid", "real"}` of `images` in [0, 1]."""
        features, logits = self.features(images)
        return dict(
            distance=frechet_distance(self.real_features, features),
            coverage=coverage(self.classes(logits)),
            kid=kernel_distance(self.real_features, features),
            real=float(np.mean(logits.argmax(-1) != logits.shape[-1] - 1)) if self.spoilt else 1.0,
        )


def frechet_distance(a, b):
    from scipy import linalg

    mean = np.sum((a.mean(0) - b.mean(0)) ** 2)
    covariance_a, covariance_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(covariance_a @ covariance_b)
    return float(mean + np.trace(covariance_a + covariance_b - 2.0 * np.real(root)))


def coverage(logits):
    """How evenly `logits` `(n, classes)` spread over the classes."""
    logits = logits - logits.max(-1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(-1, keepdims=True)
    marginal = probabilities.mean(0)
    entropy = -np.sum(marginal * np.log(marginal + 1e-12))
    return float(np.exp(entropy) / logits.shape[-1])


def kernel_distance(a, b):
    """Unbiased KID with the cubic polynomial kernel (Binkowski et al. 2018)."""
    dims = a.shape[-1]

    def kernel(x, y):
        return (x @ y.T / dims + 1.0) ** 3

    m, n = len(a), len(b)
    aa, bb, ab = kernel(a, a), kernel(b, b), kernel(a, b)
    return float(
        (aa.sum() - np.trace(aa)) / (m * (m - 1))
        + (bb.sum() - np.trace(bb)) / (n * (n - 1))
        - 2.0 * ab.mean()
    )


def main():
    """Each set's classifiers, their accuracy, and the scores of known
    references: training images (the floor), blurred images, uniform noise."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--sets", default="photos,landscapes")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--count", type=int, default=512)
    args = parser.parse_args()

    from quality import package_first

    package_first()
    from real_sets import set_images

    for name in args.sets.split(","):
        training, _ = set_images(name, args.count, args.size, seed=0)
        training = training.astype(np.float32) / 255.0
        blocky = training.reshape(-1, args.size // 4, 4, args.size // 4, 4, 3).mean((2, 4))
        blurred = np.repeat(np.repeat(blocky, 4, axis=1), 4, axis=2)
        noise = np.random.default_rng(0).uniform(size=training.shape).astype(np.float32)
        for role in SPLITS:
            scorer = Scorer(name, args.size, args.count, role)
            print(f"{name} {role}: held-out accuracy {scorer.accuracy:.3f}")
            for label, images in (("training images", training), ("blurred 4x4", blurred),
                                  ("uniform noise", noise)):  # fmt: skip
                s = scorer.score(images)
                print(f"  {label:<16} distance {s['distance']:.3f} coverage "
                      f"{s['coverage']:.3f} kid {s['kid']:.4f} real {s['real']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
