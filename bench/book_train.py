"""The book's training script, as its chapter 8 notebook runs it, for whole-run timing.

    python bench/book_train.py --data FOLDER --image-size 64 --epochs 1 --dataset-repetitions 10

`keras.utils.image_dataset_from_directory`, the book's `preprocess` (divide by
255), `repeat(DATASET_REPETITIONS)`, `batch(64, drop_remainder=True)`, then
`fit` with the notebook's callbacks: weights saved after every epoch and 10
images generated with 20 diffusion steps after every epoch. TensorFlow is
imported before anything of this package, so its own defaults hold (oneDNN
off on CPUs without AVX-512 class features), as for a reader of the book.
"""

import argparse
import os
import tempfile

import tensorflow as tf  # first: TensorFlow's own defaults, as in the book's notebook

HERE = os.path.dirname(os.path.abspath(__file__))

import keras  # noqa: E402
from book_baseline import BookDiffusionModel  # noqa: E402


class ImageGenerator(keras.callbacks.Callback):
    """The notebook's per-epoch samples (it displays them; here they are kept)."""

    def __init__(self, num_img=10, diffusion_steps=20):
        super().__init__()
        self.num_img, self.diffusion_steps = num_img, diffusion_steps

    def on_epoch_end(self, epoch, logs=None):
        self.images = self.model.generate(self.num_img, self.diffusion_steps).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an image folder")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--dataset-repetitions", type=int, default=5)
    parser.add_argument("--output", default=None, help="checkpoint folder (default: temporary)")
    args = parser.parse_args()
    size = args.image_size
    train_data = keras.utils.image_dataset_from_directory(
        args.data, labels=None, image_size=(size, size), batch_size=None, shuffle=True,
        seed=42, interpolation="bilinear",
    )  # fmt: skip
    train = train_data.map(lambda img: tf.cast(img, "float32") / 255.0)
    train = train.repeat(args.dataset_repetitions)
    train = train.batch(args.batch_size, drop_remainder=True)
    model = BookDiffusionModel(image_size=size, batch_size=args.batch_size)
    model.normalizer.adapt(train)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4))
    model.built = True  # Keras 3 saves only built models; Keras 2 did not ask
    output = args.output or tempfile.mkdtemp()
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(output, "checkpoint.weights.h5"), save_weights_only=True
    )
    model.fit(train, epochs=args.epochs, callbacks=[checkpoint, ImageGenerator()], verbose=2)


if __name__ == "__main__":
    main()
