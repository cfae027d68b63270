"""The autoencoder of latent diffusion on held-out flowers: reconstruction PSNR and SSIM.

    python bench/autoencoder.py                          # 128x128, f=4, 10 epochs
    python bench/autoencoder.py --epochs 3 --image-size 64
    python bench/autoencoder.py --crop 64 --save runs/ae.keras   # train on 64x64 crops

Trains the default `Autoencoder` (`--factor`, CPU-sized widths) on
`builtin:flowers` at `--image-size`, with 256 images held out, batch 32,
Adam 1e-3 (`--learning-rate`), on whole images or on seeded random `--crop`
squares of them (the network is convolutional; held-out images are always
reconstructed whole), and after every epoch prints the held-out reconstruction PSNR and
SSIM (from the posterior means, as latent diffusion decodes them), the CPU
minutes so far and the latent scale. With `--save`, the autoencoder (its
latent scale measured) is saved there after every epoch. Run by hand, never
by CI.
"""

import argparse
import os
import resource
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--factor", type=int, default=4, choices=[4, 8])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--crop", type=int, default=0, help="train on random crops of this size")
    parser.add_argument("--save", default=None, help="save the autoencoder here every epoch")
    parser.add_argument("--init", default=None, help="start from this saved autoencoder's weights")
    parser.add_argument("--decay", action="store_true",
                        help="cosine-decay the learning rate to 0 over the run")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import numpy as np

    import diffusion_keras as dk
    from diffusion_keras.data.datasets import (
        image_dataset,
        random_crops,
        split_held_out,
        train_dataset,
    )
    from diffusion_keras.training.callbacks import save_model_atomically

    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}")
    data = dk.load_images("builtin:flowers", args.image_size)
    train, held_out = split_held_out(data, args.held_out, args.seed)
    real = held_out.images.astype(np.float32) / 255.0
    autoencoder = dk.Autoencoder(factor=args.factor, seed=args.seed)
    if args.init:
        from diffusion_keras.models.saving import load_autoencoder

        autoencoder.set_weights(load_autoencoder(args.init).get_weights())
    steps = len(train) // args.batch_size
    rate = args.learning_rate
    if args.decay:
        rate = keras.optimizers.schedules.CosineDecay(rate, args.epochs * steps)
    autoencoder.compile(optimizer=keras.optimizers.Adam(rate))
    print(f"{len(train)} training images at {args.image_size}x{args.image_size}, f={args.factor}, "
          f"widths {autoencoder.widths}: {autoencoder.count_params():,} weights")  # fmt: skip
    dataset = train_dataset(train, args.batch_size, 1, seed=args.seed, epochs=args.epochs)
    if args.crop:
        if not 0 < args.crop <= args.image_size or args.crop % args.factor:
            raise SystemExit(f"--crop must be a multiple of {args.factor} up to --image-size")
        dataset = random_crops(dataset, args.crop, args.seed)

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            result = autoencoder.evaluate(real, batch_size=args.batch_size, verbose=0,
                                          return_dict=True)  # fmt: skip
            if args.save:
                autoencoder.measure_latent_scale(image_dataset(train, args.batch_size))
                save_model_atomically(autoencoder, args.save)
            print(f"epoch {epoch + 1}: held-out PSNR {result['psnr']:.2f} dB, SSIM "
                  f"{result['ssim']:.4f}, L1 {result['l1']:.4f}; "
                  f"{(usage.ru_utime + usage.ru_stime) / 60:.1f} CPU min, "
                  f"{(time.perf_counter() - start) / 60:.1f} wall min", flush=True)  # fmt: skip

    start = time.perf_counter()
    autoencoder.fit(dataset, epochs=args.epochs, steps_per_epoch=steps, verbose=0,
                    callbacks=[Report()], shuffle=False)  # fmt: skip
    scale = autoencoder.measure_latent_scale(image_dataset(train, args.batch_size))
    print(f"latent scale {scale:.4f}")


if __name__ == "__main__":
    main()
