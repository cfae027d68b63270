"""Editing with a bench-trained model: image-to-image, inpainting seams, denoising PSNR.

    python bench/editing.py --model runs/race/flowers_default.keras
    python bench/editing.py                 # trains the default recipe first (20 CPU min)
    python bench/editing.py --budget 8      # a shorter training run

Works on held-out `builtin:flowers` at 32x32, the images `bench/quality.py`
holds out (same split and seed), with a model `bench/quality.py --save-dir`
saved, or one it trains with `bench/quality.py --recipes default --budget B`.
Prints three tables and writes a PNG (`--plot`):

1. image-to-image: the mean change per pixel at several strengths, and
   whether strength 1 gives `generate`'s images from the same seed;
2. inpainting: for three masks, the seam measure (`editing.seam_ratio`:
   gradient across the mask's border over the same two pixels further out;
   about 1 when the seam is as smooth as the image) of the originals, of
   `edit` with several samplers (with and without `--harmonize`), and of
   RePaint's pasting (the kept region replaced after each step with freshly
   noised original, Lugmayr et al. 2022) at the same cost, written out here
   as an eager loop for comparison; how real the centre-inpainted images
   look (KID, random features, against the held-out images not edited); and
   the largest change in the kept region;
3. denoising: PSNR of noisy held-out images and of `edit(noise_level=...)`
   at several noise levels and step counts, with whether the level is one the
   model trained on.

Run by hand, never by CI.
"""

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def trained_model(args):
    """`--model`, or the default recipe trained by bench/quality.py now."""
    if args.model:
        return args.model
    save_dir = os.path.join(args.work_dir, "race")
    command = [
        sys.executable, os.path.join(HERE, "quality.py"), "--datasets", "flowers",
        "--recipes", "default", "--budget", str(args.budget), "--save-dir", save_dir,
        "--plot", os.path.join(args.work_dir, "race.png"), "--reuse",
    ]  # fmt: skip
    print("training:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    found = sorted(glob.glob(os.path.join(save_dir, "flowers_*.keras")))
    if not found:
        raise SystemExit(f"bench/quality.py saved no model in {save_dir}")
    return found[0]


def repaint_paste(model, images, mask, steps, seed, eta):
    """RePaint's way, for comparison: the sampler steps on its own, then the
    kept region of its next images is the original noised afresh."""
    import numpy as np
    from keras import ops

    from diffusion_keras.editing.edits import edit_times, model_zero_time

    count = len(images)
    times = edit_times(model.diffusion_schedule, model_zero_time(model), 1.0, steps)
    times_tensor = ops.convert_to_tensor(times)
    masks = np.broadcast_to(mask[None, :, :, None], images.shape).astype(np.float32)
    known = ops.convert_to_numpy(model.normalize(images))
    noise = model.make_noise(count, seed)
    rates = [ops.convert_to_numpy(r) for r in model.diffusion_schedule(times)]
    noise_rates, signal_rates = rates
    current = masks * noise + (1 - masks) * (signal_rates[0] * known + noise_rates[0] * noise)
    current = current.astype(np.float32)
    pred = current
    step_noises = model.generator._step_noises(seed, range(count), steps) if eta else None
    rng = np.random.default_rng([seed, 99])
    for step in range(steps):
        current, pred = model.sampling_step(
            ops.convert_to_tensor(current), ops.convert_to_tensor(pred), step, steps, "ddim", eta,
            None if step_noises is None else step_noises[step], None, times_tensor,
        )  # fmt: skip
        fresh = rng.standard_normal(images.shape).astype(np.float32)
        known_next = signal_rates[step + 1] * known + noise_rates[step + 1] * fresh
        current = masks * ops.convert_to_numpy(current) + (1 - masks) * known_next
        pred = masks * ops.convert_to_numpy(pred) + (1 - masks) * known
    result = ops.convert_to_numpy(model.denormalize(pred))
    return masks * result + (1 - masks) * images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a 32x32 flowers model (default: train one)")
    parser.add_argument("--budget", type=float, default=20.0, help="CPU minutes of training")
    parser.add_argument("--work-dir", default="runs/bench_editing")
    parser.add_argument("--images", type=int, default=64, help="held-out images to edit")
    parser.add_argument("--plot", default="docs/editing.png")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    path = trained_model(args)

    import diffusion_keras  # noqa: F401, I001  first: the package's CPU-kernel choice
    import numpy as np  # noqa: I001

    from diffusion_keras.data.datasets import load_images, split_held_out
    from diffusion_keras.editing.edits import psnr, relative_noise_of, seam_ratio
    from diffusion_keras.utils.images import save_grid
    from diffusion_keras.metrics.kid import kid_from_features, random_features
    from diffusion_keras.models.saving import load_model

    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; model {path}")
    model = load_model(path, compile=False)
    size = model.image_size
    _, held_out = split_held_out(load_images("builtin:flowers", size), 256, 0)
    images = held_out.images[: args.images].astype(np.float32) / 255.0
    default = dict(diffusion_steps=5, sampler="dpmpp_2m", spacing="log_snr")

    print("\n1. image-to-image (dpmpp_2m, 5 log-SNR steps)")
    print(f"{'strength':>9}{'mean change':>13}")
    rows_for_plot = [images[:8]]
    for strength in (0.01, 0.1, 0.3, 0.5, 0.7, 1.0):
        edited = model.edit(images, strength=strength, seed=0, **default)
        print(f"{strength:>9}{np.abs(edited - images).mean():>13.4f}")
        if strength in (0.3, 0.5, 0.7):
            rows_for_plot.append(edited[:8])
    same = np.array_equal(
        model.edit(images, strength=1.0, seed=0, **default),
        model.generate(len(images), seed=0, **default),
    )
    print(f"strength 1 gives generate's images from the same seed: {same}")

    print("\n2. inpainting: seam measure (about 1: as smooth as the image around it)")
    masks = {}
    quarter = size // 4
    masks["centre"] = np.zeros((size, size), np.float32)
    masks["centre"][quarter:-quarter, quarter:-quarter] = 1
    masks["corner"] = np.zeros((size, size), np.float32)
    masks["corner"][: 3 * size // 8, : 3 * size // 8] = 1
    masks["right half"] = np.zeros((size, size), np.float32)
    masks["right half"][:, size // 2 :] = 1
    methods = [
        ("ours: ddim eta 1, 20 steps (--mask default)", dict(diffusion_steps=20, eta=1.0), None),
        (
            "ours: the same, --harmonize 0 (DDNM alone)",
            dict(diffusion_steps=20, eta=1.0, harmonize=0),
            None,
        ),
        ("ours: ddim eta 0, 20 steps", dict(diffusion_steps=20), None),
        ("ours: ddim eta 0, 20 steps, resample 3", dict(diffusion_steps=20, resample=3), None),
        ("ours: dpmpp_2m, 5 log-SNR steps", default, None),
        ("ours: dpmpp_2m, 5 log-SNR steps, --harmonize 0", dict(default, harmonize=0), None),
        ("RePaint paste: ddim eta 1, 20 steps", None, 1.0),
        ("RePaint paste: ddim eta 0, 20 steps", None, 0.0),
    ]
    # How real the centre-inpainted images look: KID (random features) against
    # the held-out images not edited here.
    extractor = random_features(size)
    others = extractor(held_out.images[args.images :].astype(np.float32) / 255.0)[0]

    def centre_kid(edited):
        return float(kid_from_features(others, extractor(edited)[0]))

    header = (f"{'method':<46}" + "".join(f"{name:>12}" for name in masks)
              + f"{'seconds':>9}{'centre KID':>12}")  # fmt: skip
    print(header)
    print(f"{'originals':<46}" + "".join(f"{seam_ratio(images, m):>12.3f}" for m in masks.values())
          + f"{'':>9}{centre_kid(images):>12.4f}")  # fmt: skip
    kept_error = 0.0
    for label, settings, repaint_eta in methods:
        cells, start, kid = [], time.perf_counter(), None
        for name, mask in masks.items():
            if settings is None:
                edited = repaint_paste(model, images, mask, 20, 1, repaint_eta)
            else:
                edited = model.edit(images, mask=mask, seed=1, **settings)
                kept_error = max(kept_error, np.abs(edited - images)[:, mask == 0].max())
                if name == "centre" and "--mask default" in label:
                    rows_for_plot.append(
                        images[:8] * (1 - mask[None, :, :, None]) + mask[None, :, :, None]
                    )
                    rows_for_plot.append(edited[:8])
            cells.append(seam_ratio(edited, mask))
            if name == "centre":
                kid = edited
        seconds = time.perf_counter() - start
        print(f"{label:<46}" + "".join(f"{c:>12.3f}" for c in cells) + f"{seconds:>9.1f}"
              + f"{centre_kid(kid):>12.4f}")  # fmt: skip
    print(f"largest change in a kept pixel (ours): {kept_error:.2e}")

    print("\n3. denoising held-out images (PSNR, dB; dpmpp_2m, log-SNR steps)")
    lowest = model.diffusion_schedule(np.zeros((1,), np.float32))
    lowest = float(np.asarray(lowest[0])[0] / np.asarray(lowest[1])[0])
    print(
        f"{'sigma (0-255)':>14}{'trained':>9}{'noisy':>8}"
        + "".join(f"{f'{s} steps':>10}" for s in (1, 2, 5))
    )
    rng = np.random.default_rng(0)
    for sigma in (10, 25, 50, 75, 100):
        level = sigma / 255.0
        noisy = np.clip(images + level * rng.standard_normal(images.shape), 0, 1).astype(np.float32)
        trained = "yes" if relative_noise_of(model, level) >= lowest else "below"
        cells = []
        for steps in (1, 2, 5):
            denoised = model.edit(noisy, noise_level=level, diffusion_steps=steps, seed=0,
                                  sampler="dpmpp_2m", spacing="log_snr")  # fmt: skip
            cells.append(psnr(denoised, images).mean())
            if sigma == 50 and steps == 1:
                rows_for_plot += [noisy[:8], denoised[:8]]
        print(f"{sigma:>14}{trained:>9}{psnr(noisy, images).mean():>8.2f}"
              + "".join(f"{c:>10.2f}" for c in cells))  # fmt: skip
    grid = np.concatenate(rows_for_plot)
    big = np.repeat(np.repeat(grid, 3, axis=1), 3, axis=2)
    save_grid(big, args.plot, columns=8)
    print(f"\nwrote {args.plot}: originals; strength 0.3, 0.5, 0.7; masked; inpainted; "
          "noisy (sigma 50); denoised (1 step)")  # fmt: skip


if __name__ == "__main__":
    main()
