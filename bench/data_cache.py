"""Start-up with the decoded-image cache: first load of a folder against the next.

    python bench/data_cache.py                      # 2000 PNGs at 256x256
    python bench/data_cache.py --images 100000      # the issue's size (19.7 GB cache)

Writes `--images` built-in flowers as PNG files at `--size`, then loads the
folder with `load_images` in fresh processes, each against a new cache
folder: the first decodes into the cache, the second maps it. Prints each
one's wall time and peak resident memory, and the same for a pass of
`image_dataset` over all images (what `adapt` reads), which streams batches.
Run by hand, never by CI.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = """
import sys, time, resource
sys.path.insert(0, {root!r})
import numpy as np
from diffusion_keras.data import image_dataset, load_images
start = time.perf_counter()
data = load_images({folder!r}, {size})
loaded = time.perf_counter() - start
total = 0.0
for batch in image_dataset(data, 64).as_numpy_iterator():
    total += float(batch.sum())
print(len(data), type(data.images).__name__, loaded, time.perf_counter() - start,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_folder(folder, count, size):
    sys.path.insert(0, ROOT)
    from PIL import Image

    from diffusion_keras.flowers import flower_images

    os.makedirs(folder, exist_ok=True)
    for start in range(0, count, 500):
        for index, image in enumerate(flower_images(min(500, count - start), size), start):
            Image.fromarray(image).save(os.path.join(folder, f"{index:06d}.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    cache = tempfile.mkdtemp()
    begin = time.perf_counter()
    write_folder(folder, args.images, args.size)
    print(f"{args.images} PNGs at {args.size}x{args.size} written in "
          f"{time.perf_counter() - begin:.0f} s")  # fmt: skip
    env = dict(os.environ, DIFFUSION_KERAS_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    script = CHILD.format(root=ROOT, folder=folder, size=args.size)
    rows = []
    for name in ("first load (decodes)", "second load (maps)"):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        count, kind, loaded, passed, rss = done.stdout.split()[-5:]
        rows.append((name, float(loaded), float(passed), float(rss), kind))
        del before
    print(f"{'':<24}{'load s':>8}{'+ a pass s':>12}{'peak RSS MB':>13}  images held as")
    for name, loaded, passed, rss, kind in rows:
        print(f"{name:<24}{loaded:>8.1f}{passed:>12.1f}{rss:>13.0f}  {kind}")
    print(f"second load / first: {rows[1][1] / rows[0][1]:.3f} (target < 0.10)")
    size_gb = args.images * args.size * args.size * 3 / 1e9
    print(f"decoded size {size_gb:.2f} GB")


if __name__ == "__main__":
    main()
