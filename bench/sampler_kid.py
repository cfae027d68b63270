"""KID of one trained model's samplers on the flowers or the glyphs.

    python bench/sampler_kid.py runs/quick/model.keras --dataset flowers
    python bench/sampler_kid.py MODEL --dataset glyphs --samplers "default,ddim 20 eta 1"

Loads `MODEL` (trained on `builtin:flowers` or `bench/glyphs.py`'s glyphs at
its own image size), generates `--count` images from seed `--seed` with the
book's DDIM 20 (the baseline, always first) and with each of `--samplers`
(the labels of `bench/recipe_race.py`'s `SAMPLERS`; "default" is
`generate.py`'s), and measures each one's KID against the data set's
`--count` held-out images (`bench/quality.py`'s split, seed 0) in the
classifier's trained features and in random features. It prints a line per
sampler with both KIDs, each also as a ratio to the baseline's. The held-out
images are the ones `bench/quality.py` and `bench/distill.py` keep out of
their teachers' training; a model that trained on them (the README's quick
start trains on all 2,048 flowers) compares its samplers only with each other.
Run by hand, never by CI (docs/results/real-data.md, stop 50).
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from quality import bench_features, kid_between, load, package_first  # noqa: E402
from recipe_race import SAMPLERS, sampler_settings  # noqa: E402

BASELINE = "book (ddim 20)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a model file (RUN_DIR/model.keras)")
    parser.add_argument("--dataset", choices=("flowers", "glyphs"), default="flowers")
    parser.add_argument("--samplers",
                        default="default,sde-dpmpp_2m 10 log_snr,ddim 10 eta 1,ddim 20 eta 1")
    parser.add_argument("--count", type=int, default=512, help="images generated and held out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    labels = [BASELINE] + [s for s in args.samplers.split(",") if s != BASELINE]
    unknown = [s for s in labels if s not in SAMPLERS]
    if unknown:
        raise SystemExit(f"--samplers: unknown {unknown}; choose from {list(SAMPLERS)}")
    if not os.path.exists(args.model):
        raise SystemExit(f"{args.model}: no such model file")

    package_first()
    import keras
    import numpy as np

    model = keras.models.load_model(args.model)
    size = int(model.sample_shape[0])
    _, held_out = load(args.dataset, size, args.count, 0)
    real = held_out.images.astype(np.float32) / 255.0
    extractors = {name: bench_features(name, args.dataset, size) for name in ("trained", "random")}
    print(f"{args.model} on {args.dataset} at {size}x{size}, {args.count} images from seed "
          f"{args.seed}; KID (lower is better) and its ratio to {BASELINE}")  # fmt: skip
    baseline = None
    for label in labels:
        begin = time.perf_counter()
        generated = model.generate(args.count, seed=args.seed, **sampler_settings(label))
        seconds = time.perf_counter() - begin
        kids = {name: kid_between(e, real, generated) for name, e in extractors.items()}
        baseline = baseline or kids
        ratios = {name: kids[name] / baseline[name] for name in kids}
        print(f"{label:26s} trained {kids['trained']:7.3f} ({ratios['trained']:5.2f}x)  "
              f"random {kids['random']:7.4f} ({ratios['random']:5.2f}x)  {seconds:5.1f} s",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
