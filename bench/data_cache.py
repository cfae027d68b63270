"""Start-up with the decoded-image cache: first load of a folder against the next.

    python bench/data_cache.py                      # 2000 PNGs at 256x256
    python bench/data_cache.py --images 100000 --distinct 2000   # the issue's size

Writes `--images` built-in flowers as PNG files at `--size` (with
`--distinct N`, N drawn ones and hard links to them for the rest: every file
is still decoded), then loads the folder with `load_images` in two fresh
processes against one new cache folder: the first decodes into the cache,
the second maps it. Each then makes a pass of `image_dataset` over all images
(what `adapt` reads) and one training epoch of `train_dataset` batches (the
input pipeline alone, no network). Prints wall times and peak resident
memory (100,000 images at 256x256 are a 19.7 GB cache). Run by hand, never
by CI.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = """
import sys, time, resource
import numpy as np
from diffusion_keras.data.datasets import image_dataset, load_images, train_dataset
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
data = load_images({folder!r}, {size})
loaded, after_load = time.perf_counter() - start, peak()
total = 0.0
for batch in image_dataset(data, 64).as_numpy_iterator():
    total += float(batch[:, 0, 0].sum())
passed, after_pass = time.perf_counter() - start, peak()
steps = len(data) // 64
for batch in train_dataset(data, 64, 1, seed=0, epochs=1).take(steps).as_numpy_iterator():
    total += float(batch[:, 0, 0].sum())
print(len(data), type(data.images).__name__, loaded, passed, time.perf_counter() - start,
      after_load, after_pass, peak())
"""


def write_folder(folder, count, size, distinct):
    from PIL import Image

    from diffusion_keras.data.flowers import render_flower

    os.makedirs(folder, exist_ok=True)
    for index in range(count):
        path = os.path.join(folder, f"{index:06d}.png")
        if index < distinct:
            image = (render_flower(index, size) * 255.0).round().astype("uint8")
            Image.fromarray(image).save(path)
        else:
            os.link(os.path.join(folder, f"{index % distinct:06d}.png"), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--folder", help="write the images here and keep them (reused when "
                        "it already holds them)")  # fmt: skip
    parser.add_argument("--distinct", type=int, default=0,
                        help="draw this many, hard-link the rest (default: all drawn)")  # fmt: skip
    args = parser.parse_args()
    distinct = min(args.distinct or args.images, args.images)
    folder = args.folder or tempfile.mkdtemp()
    cache = tempfile.mkdtemp()
    begin = time.perf_counter()
    if not (os.path.isdir(folder) and len(os.listdir(folder)) == args.images):
        write_folder(folder, args.images, args.size, distinct)
    print(f"{args.images} PNGs at {args.size}x{args.size} ({distinct} distinct) in {folder}, "
          f"{time.perf_counter() - begin:.0f} s", flush=True)  # fmt: skip
    env = dict(os.environ, DIFFUSION_KERAS_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    script = CHILD.format(root=ROOT, folder=folder, size=args.size)
    rows = []
    for name in ("first load (decodes)", "second load (maps)"):
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        count, kind, *numbers = done.stdout.split()[-8:]
        rows.append((name, kind, *[float(number) for number in numbers]))
    print(f"{'':<22}{'load s':>8}{'+ a pass s':>12}{'+ an epoch s':>14}   peak RSS MB after "
          "load / pass / epoch   images held as")  # fmt: skip
    for name, kind, loaded, passed, epoch, *peaks in rows:
        peaks = " / ".join(f"{peak:.0f}" for peak in peaks)
        print(f"{name:<22}{loaded:>8.1f}{passed:>12.1f}{epoch:>14.1f}   {peaks:<34}{kind}")
    print(f"second load / first: {rows[1][2] / rows[0][2]:.3f} (target < 0.10)")
    size_gb = args.images * args.size * args.size * 3 / 1e9
    print(f"decoded size {size_gb:.2f} GB")
    if not args.folder:
        shutil.rmtree(folder)
    shutil.rmtree(cache)


if __name__ == "__main__":
    main()
