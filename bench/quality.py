"""Time to quality: training recipes raced on the same CPU budget, KID against CPU minutes.

    python bench/quality.py                                   # 20 CPU-minutes a recipe
    python bench/quality.py --budget 8 --datasets flowers     # a shorter race
    python bench/quality.py --recipes book,default --samplers # and the samplers at the end
    python bench/quality.py --save-dir runs/race --reuse      # finish an interrupted race

Each recipe trains the book's U-Net at 32x32 in a fresh process until its
process has used `--budget` CPU minutes (user + system time of all its
threads, so a busy machine slows the clock, not the result), on two data sets
the bench makes itself: `builtin:flowers` and rendered glyphs (`glyphs.py`),
which are not mirror symmetric. Images held out from training are the KID
reference; KID is measured at `--marks` points in time with the book's
sampler (DDIM, 20 uniform steps, from the same seeded noise every time), its
cost not counted in the budget. Features are InceptionV3's where its ImageNet
weights load, otherwise the documented random-feature substitute, whose values
compare only with each other; two references are printed with them: training
images against held-out ones (the floor) and uniform noise.

The recipes (`--recipes`, comma-separated, from `RECIPES` below): `book` is
the book's notebook exactly (its EMA without warm-up), `book_ema_warmup` the
same with the EMA warm-up, and the others are candidates. The table gives,
for each, the KID at each mark and the speed-up: the CPU minutes the book
needs to reach its final KID over the minutes the recipe needs to reach it
(linear between marks; "not reached" when it never does). A PNG of KID
against CPU minutes, one line per recipe, goes to `--plot`. Run by hand,
never by CI.

Recipes whose settings come out identical (`no_precise_bn` is `book_ema_warmup`)
are trained once and share a result. With `--save-dir`,
each result is also kept as `DATASET_RECIPE.json`, and `--reuse` takes those
instead of training again, so a long race can be finished in parts.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Settings over `TrainConfig.for_recipe(...)`; "recipe" names its base.
# `precise_bn` is the default before log-normal times, written out (noise,
# MAE, uniform times): the candidates measured against it are written over
# it, so that their names keep meaning what the README's tables measured
# whatever the default becomes. `log_normal_noisier` is the default now.
PRECISE_BN = dict(recipe="default", prediction="noise", loss="mae", time_sampling="uniform")
RECIPES = {
    "book": dict(recipe="book"),
    "book_ema_warmup": dict(recipe="book", ema_warmup=True),
    "default": dict(recipe="default"),
    # MSE on the velocity with uniform times: far ahead on the flowers, far
    # behind on the glyphs (README "Time to quality"), so not the default.
    "velocity_mse": dict(
        recipe="default", prediction="velocity", loss="mse", time_sampling="uniform",
    ),
    "velocity_mae": dict(
        recipe="default", prediction="velocity", loss="mae", time_sampling="uniform",
    ),
    # EDM's loss (Karras et al. 2022) for unit-variance data: its weighting on
    # the clean image with its preconditioning is unit-weighted MSE on the
    # velocity; with its log-normal noise levels.
    "edm": dict(
        recipe="default", prediction="velocity", loss="mse", time_sampling="log_normal",
        log_snr_mean=1.0,
    ),
    "precise_bn": PRECISE_BN,
    "batch16": dict(PRECISE_BN, batch_size=16),
    "batch16_cosine": dict(
        PRECISE_BN, batch_size=16, learning_rate=2e-3, lr_schedule="cosine", warmup_steps=200,
    ),
    "cosine": dict(PRECISE_BN, lr_schedule="cosine", warmup_steps=40),
    "no_precise_bn": dict(PRECISE_BN, precise_bn_batches=0),
    "lr2e-3_cosine": dict(PRECISE_BN, learning_rate=2e-3, lr_schedule="cosine", warmup_steps=40),
    "lr3e-3_cosine": dict(PRECISE_BN, learning_rate=3e-3, lr_schedule="cosine", warmup_steps=40),
    "min_snr_velocity": dict(
        PRECISE_BN, prediction="velocity", loss="mse", loss_weighting="min_snr",
    ),
    "cosine_min_snr_velocity": dict(
        PRECISE_BN, lr_schedule="cosine", warmup_steps=40, prediction="velocity", loss="mse",
        loss_weighting="min_snr",
    ),
    "cosine_mse": dict(PRECISE_BN, lr_schedule="cosine", warmup_steps=40, loss="mse"),
    "cosine_no_ema": dict(PRECISE_BN, lr_schedule="cosine", warmup_steps=40, ema=0.0),
    "beta2": dict(PRECISE_BN, adam_beta_2=0.99),
    "cosine_beta2": dict(PRECISE_BN, lr_schedule="cosine", warmup_steps=40, adam_beta_2=0.99),
    "log_normal": dict(PRECISE_BN, time_sampling="log_normal", log_snr_mean=1.0),
    "log_normal_noisier": dict(PRECISE_BN, time_sampling="log_normal", log_snr_mean=-1.5),
    "log_normal_noisiest": dict(PRECISE_BN, time_sampling="log_normal", log_snr_mean=-3.0),
    "cosine_log_normal": dict(
        PRECISE_BN, lr_schedule="cosine", warmup_steps=40, time_sampling="log_normal",
        log_snr_mean=1.0,
    ),
    "edm_noisier": dict(
        recipe="default", prediction="velocity", loss="mse", time_sampling="log_normal",
        log_snr_mean=-1.5,
    ),
    # Candidates over the current default (bench/recipe_race.py): the
    # learning rate decayed to zero at the planned end, and EDM2's power
    # function EMA of relative length 0.1 in place of the fixed decay.
    "cosine_to_zero": dict(recipe="default", lr_schedule="cosine", warmup_steps=40),
    "lr2e-3_to_zero": dict(recipe="default", learning_rate=2e-3, lr_schedule="cosine",
                           warmup_steps=40),
    "ema_power": dict(recipe="default", ema_length=0.1),
    "ema_power_0.05": dict(recipe="default", ema_length=0.05),
    # Over the current default, raced on the real-data benches (stop 46):
    # Adam's beta_2 as lucidrains' trainer, twice the learning rate, and
    # min-SNR-5 weighted MSE on the noise.
    "default_beta2": dict(recipe="default", adam_beta_2=0.99),
    "default_lr2e-3": dict(recipe="default", learning_rate=2e-3),  # the default since 2026-12-05
    "default_lr1e-3": dict(recipe="default", learning_rate=1e-3),  # the default before
    "default_min_snr_mse": dict(recipe="default", loss="mse", loss_weighting="min_snr"),
    # Over the 2e-3 default (stop 48): twice the peak, lucidrains' beta_2
    # at the new rate, and both.
    "default_lr4e-3": dict(recipe="default", learning_rate=4e-3),
    "default_lr4e-3_beta2": dict(recipe="default", learning_rate=4e-3, adam_beta_2=0.99),
    "default_lr2e-3_beta2": dict(recipe="default", learning_rate=2e-3, adam_beta_2=0.99),
    # Batch 16 over the 2e-3 default (stop 50), raced at equal images
    # (`@1568`: 1,568 steps of 16 are 392 of 64), at the default's rate and at
    # half of it (Adam's square-root rule for a quarter of the batch).
    "default_batch16": dict(recipe="default", batch_size=16),
    "default_batch16_lr1e-3": dict(recipe="default", batch_size=16, learning_rate=1e-3),
    # Loss weighting with each prediction target over the 2e-3 default (stop
    # 51), all on the squared error: min-SNR-5 (Hang et al. 2023) and EDM's
    # (Karras et al. 2022; on velocity it is the unweighted loss). The
    # default's log-normal times are kept.
    "default_edm_noise": dict(recipe="default", loss="mse", loss_weighting="edm"),
    "default_velocity_mse": dict(recipe="default", prediction="velocity", loss="mse"),
    "default_velocity_min_snr": dict(recipe="default", prediction="velocity", loss="mse",
                                     loss_weighting="min_snr"),
    "default_image_min_snr": dict(recipe="default", prediction="image", loss="mse",
                                  loss_weighting="min_snr"),
    "default_image_edm": dict(recipe="default", prediction="image", loss="mse",
                              loss_weighting="edm"),
    "edm_noisiest": dict(
        recipe="default", prediction="velocity", loss="mse", time_sampling="log_normal",
        log_snr_mean=-3.0,
    ),
}  # fmt: skip
FEATURE_CHOICES = ["auto", "inception", "random", "trained"]
SAMPLERS = [
    ("ddim, 20 steps (the book's)", dict(diffusion_steps=20)),
    ("ddim, 10 steps", dict(diffusion_steps=10)),
    ("ddim, 20 steps, log_snr", dict(diffusion_steps=20, spacing="log_snr")),
    ("ddim, 10 steps, log_snr", dict(diffusion_steps=10, spacing="log_snr")),
    ("ddim, 5 steps, log_snr", dict(diffusion_steps=5, spacing="log_snr")),
    ("dpmpp_2m, 10 steps, log_snr", dict(diffusion_steps=10, sampler="dpmpp_2m",
                                          spacing="log_snr")),
    ("dpmpp_2m, 5 steps, log_snr", dict(diffusion_steps=5, sampler="dpmpp_2m",
                                         spacing="log_snr")),
]  # fmt: skip


def package_first():
    """Makes the package importable and imports it before TensorFlow, so that
    its CPU-kernel choice (`diffusion_keras.utils.runtime`) holds, as in train.py."""
    import diffusion_keras  # noqa: F401


def pixel_grid(images, path, columns):
    """Writes `images` as a PNG grid, images smaller than 64 pixels drawn
    larger, pixel for pixel."""
    import numpy as np

    from diffusion_keras.utils.images import save_grid

    scale = max(1, 64 // images.shape[1])
    images = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    save_grid(images, path, columns=columns)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(dataset, size, held_out, seed):
    from glyphs import glyph_images

    from diffusion_keras.data.datasets import ImageData, load_images, split_held_out

    if dataset == "flowers":
        data = load_images("builtin:flowers", size)
    else:
        data = ImageData(glyph_images(2048, size), source="glyphs")
    return split_held_out(data, held_out, seed)


def bench_features(name, dataset, size):
    """The KID feature extractor `name` ("auto", "inception", "random", or
    "trained": `bench/trained_features.py`'s classifier of `dataset`)."""
    if name == "trained":
        from trained_features import trained_features

        return trained_features(dataset, size)
    from diffusion_keras.metrics.kid import feature_extractor

    return feature_extractor(name, size)


def kid_between(extractor, real, other, subset=128):
    from diffusion_keras.metrics.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(extractor)
    for start in range(0, len(real) - subset + 1, subset):
        metric.update_state(real[start : start + subset], other[start : start + subset])
    return float(metric.result())


def recipe_config(recipe, args):
    """The `TrainConfig` of `recipe` in this race."""
    package_first()
    from diffusion_keras.training.run import TrainConfig

    settings = dict(RECIPES[recipe])
    return TrainConfig.for_recipe(
        settings.pop("recipe"), image_size=args.image_size, seed=args.seed,
        precision=args.precision, **settings,
    )  # fmt: skip


def recipe_run(config, args, total_steps):
    """What a worker trains and measures with: `(model, dataset, real,
    extractor, settle)`, the model built for `total_steps` and adapted to the
    training images, `real` the held-out images in [0, 1], and `settle(mark)`
    what `train()` does at an epoch's end before sampling: the EMA network's
    precise batch norm when the recipe has it (`diffusion_keras.training.precise_bn`)."""
    import numpy as np

    from diffusion_keras.data.datasets import train_dataset
    from diffusion_keras.training.run import build_model

    train_data, held_out = load(args.dataset, args.image_size, args.held_out, args.seed)
    real = held_out.images.astype(np.float32) / 255.0
    extractor = bench_features(args.features, args.dataset, args.image_size)
    model = build_model(config, total_steps=max(total_steps, 1))
    model.adapt(train_data.images.astype(np.float32) / 255.0)
    dataset = train_dataset(train_data, config.batch_size, 1, seed=args.seed, flip=config.flip)
    callback = None
    if config.precise_bn_batches:
        from diffusion_keras.training.precise_bn import PreciseBatchNorm

        callback = PreciseBatchNorm(
            train_data, config.precise_bn_batches, config.batch_size, config.seed
        )
        callback.set_model(model)

    def settle(mark):
        if callback is not None:
            callback.on_epoch_end(mark)

    return model, dataset, real, extractor, settle


def race_callback(label, marks, start, settle, sample):
    """A Keras callback that races a training run against CPU time.

    Each time the CPU seconds used since `start`, sampling not counted, pass
    the next of `marks` (seconds), it runs `settle(steps)` (counted: what
    `train()` does at an epoch's end, such as precise BN) and `sample()`, which
    returns `(images, kid)` (not counted), appends `(minutes, steps, kid)` to
    its `curve`, keeps the images in `images`, and stops training after the
    last mark."""
    import keras

    class Race(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.curve, self.images, self.excluded = [], None, 0.0

        def on_train_batch_end(self, batch, logs=None):
            used = cpu_seconds() - start - self.excluded
            if not marks or used < marks[0]:
                return
            marks.pop(0)
            settle(batch + 1)
            begin = cpu_seconds()
            self.images, kid = sample()
            self.excluded += cpu_seconds() - begin
            self.curve.append((used / 60.0, batch + 1, kid))
            print(f"{label}: {used / 60:.1f} CPU min, {batch + 1} steps, KID {kid:.4f}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if not marks:
                self.model.stop_training = True

    return Race()


def worker(args):
    """Trains one recipe on one data set for the budget; prints one JSON line."""
    package_first()
    import numpy as np

    config = recipe_config(args.recipe, args)
    budget = args.budget * 60.0
    # A schedule needs the run's length: from the CPU cost per image measured
    # for the book's recipe in this run (the same network and image size).
    total_steps = int(budget * args.images_per_cpu_second / config.batch_size)
    model, dataset, real, extractor, settle = recipe_run(config, args, total_steps)
    marks = [budget * (k + 1) / args.marks for k in range(args.marks)]

    def sample():
        images = model.generate(len(real), 20, seed=args.seed)
        return images, kid_between(extractor, real, images)

    race = race_callback(args.recipe, marks, cpu_seconds(), settle, sample)
    wall = time.perf_counter()
    model.fit(dataset, steps_per_epoch=10**7, epochs=1, verbose=0, callbacks=[race])
    result = dict(recipe=args.recipe, dataset=args.dataset, curve=race.curve,
                  wall_minutes=(time.perf_counter() - wall) / 60.0)  # fmt: skip
    if args.save:
        model.save(args.save)
        np.save(args.save + ".samples.npy", race.images[:20])
    if args.samplers:
        rows = []
        for label, sampling in SAMPLERS:
            begin = time.perf_counter()
            images = model.generate(len(real), seed=args.seed, **sampling)
            seconds = time.perf_counter() - begin
            rows.append((label, kid_between(extractor, real, images), seconds))
        result["samplers"] = rows
    print(json.dumps(result))


def references(args):
    """Floor and ceiling KIDs and the features' name, in a worker process."""
    package_first()
    import numpy as np

    out = {}
    for dataset in args.datasets.split(","):
        train_data, held_out = load(dataset, args.image_size, args.held_out, args.seed)
        real = held_out.images.astype(np.float32) / 255.0
        extractor = bench_features(args.features, dataset, args.image_size)
        rng = np.random.default_rng(args.seed)
        sample = train_data.images[rng.choice(len(train_data), len(real), replace=False)]
        out[dataset] = dict(
            floor=kid_between(extractor, real, sample.astype(np.float32) / 255.0),
            noise=kid_between(extractor, real, rng.uniform(size=real.shape).astype(np.float32)),
            features=extractor.name,
        )
    print(json.dumps(out))


def recipe_settings(recipe, args):
    """The full training settings of `recipe` in this race, to tell which
    recipes are the same."""
    import dataclasses

    config = recipe_config(recipe, args)
    return json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)


def run_worker(args, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1")
    command = [
        sys.executable, __file__, "--image-size", str(args.image_size), "--seed", str(args.seed),
        "--held-out", str(args.held_out), "--features", args.features, "--budget",
        str(args.budget), "--marks", str(args.marks), "--precision", args.precision,
        "--datasets", args.datasets, *extra,
    ]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def minutes_to_reach(curve, target):
    """CPU minutes at which a KID curve first reaches `target` (linear
    between marks), or None."""
    previous = (0.0, None)
    for minutes, _, kid in curve:
        if kid <= target:
            if previous[1] is None or previous[1] == kid:
                return minutes
            fraction = (previous[1] - target) / (previous[1] - kid)
            return previous[0] + fraction * (minutes - previous[0])
        previous = (minutes, kid)
    return None


def plot(results, refs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(refs)
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for result in results:
            if result["dataset"] == dataset and "same_as" not in result:
                minutes = [c[0] for c in result["curve"]]
                kids = [c[2] for c in result["curve"]]
                same = [
                    r["recipe"] for r in results
                    if r["dataset"] == dataset and r.get("same_as") == result["recipe"]
                ]  # fmt: skip
                label = " = ".join([result["recipe"], *same])
                axis.plot(minutes, kids, marker="o", label=label)
        axis.axhline(refs[dataset]["noise"], color="grey", linestyle=":", label="uniform noise")
        axis.set_yscale("log")
        axis.set_xlabel("CPU minutes of training")
        axis.set_ylabel(f"KID ({refs[dataset]['features']} features)")
        axis.set_title(f"{dataset}, 32x32" if dataset else dataset)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0, help="CPU minutes a recipe")
    parser.add_argument("--marks", type=int, default=5, help="KID measurements a recipe")
    parser.add_argument("--datasets", default="flowers,glyphs")
    parser.add_argument("--recipes", default="book,book_ema_warmup,default,batch16")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--features", default="auto", choices=FEATURE_CHOICES)
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "auto"])  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", action="store_true",
                        help="also race the samplers on the last recipe trained")  # fmt: skip
    parser.add_argument("--plot", default="docs/time_to_quality.png")
    parser.add_argument("--save-dir", default=None, help="keep each final model here")
    parser.add_argument("--side-by-side", default="docs/book_vs_default.png",
                        help="with --save-dir: the first and last recipes' samples")  # fmt: skip
    parser.add_argument("--reuse", action="store_true",
                        help="with --save-dir: take results kept there, not train")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--references", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--images-per-cpu-second", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.references:
        return references(args)
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or "book" not in recipes:
        raise SystemExit(f"--recipes: unknown {unknown}; 'book' must be among {list(RECIPES)}")
    recipes = ["book"] + [r for r in recipes if r != "book"]
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; precision {args.precision}")
    refs = run_worker(args, "--references")
    results = []
    for dataset in args.datasets.split(","):
        print(f"\n{dataset}: KID references ({refs[dataset]['features']} features): "
              f"held-out vs training {refs[dataset]['floor']:.4f}, noise "
              f"{refs[dataset]['noise']:.4f}", flush=True)  # fmt: skip
        rate, trained = None, {}
        settings = {recipe: recipe_settings(recipe, args) for recipe in recipes}
        unique = [r for i, r in enumerate(recipes) if settings[r] not in
                  [settings[q] for q in recipes[:i]]]  # fmt: skip
        for recipe in recipes:
            saved = os.path.join(args.save_dir or "", f"{dataset}_{recipe}.json")
            same = trained.get(settings[recipe])
            if same is not None:
                result = dict(same, recipe=recipe, same_as=same["recipe"])
            elif args.reuse and os.path.exists(saved):
                with open(saved) as handle:
                    result = json.load(handle)
            else:
                extra = ["--worker", "--recipe", recipe, "--dataset", dataset,
                         "--images-per-cpu-second", str(rate or 1.0)]  # fmt: skip
                if args.save_dir:
                    os.makedirs(args.save_dir, exist_ok=True)
                    extra += ["--save", os.path.join(args.save_dir, f"{dataset}_{recipe}.keras")]
                if args.samplers and recipe == unique[-1]:
                    extra.append("--samplers")
                result = run_worker(args, *extra)
                if args.save_dir:
                    with open(saved, "w") as handle:
                        json.dump(result, handle)
            trained.setdefault(settings[recipe], result)
            results.append(result)
            if recipe == "book":
                minutes, steps, _ = result["curve"][-1]
                rate = steps * 64 / (minutes * 60.0)
        book = next(r for r in results if r["dataset"] == dataset and r["recipe"] == "book")
        target = book["curve"][-1][2]
        minutes = [f"{c[0]:.1f}" for c in book["curve"]]
        print(f"KID at CPU minutes {', '.join(minutes)} (steps in brackets); the book's final "
              f"KID {target:.4f}")  # fmt: skip
        # The book's recipe with the EMA warm-up is the stronger baseline: its
        # speed-up is printed too when it ran.
        warm = [r for r in results if r["dataset"] == dataset and r["recipe"] == "book_ema_warmup"]
        header = f"{'recipe':<32}{'KIDs':<56}{'reaches it at':>14}{'speed-up':>10}"
        if warm:
            print(f"(book_ema_warmup's final KID {warm[0]['curve'][-1][2]:.4f}: the last column)")
            header += f"{'vs warm-up':>12}"
        print(header)
        for result in results:
            if result["dataset"] != dataset:
                continue
            kids = " ".join(f"{c[2]:.4f}({c[1]})" for c in result["curve"])
            reached = minutes_to_reach(result["curve"], target)
            total = book["curve"][-1][0]
            speedup = f"{total / reached:.2f}x" if reached else "-"
            at = f"{reached:.1f} min" if reached else "not reached"
            label = result["recipe"] + (f" (= {result['same_as']})" if "same_as" in result else "")
            line = f"{label:<32}{kids:<56}{at:>14}{speedup:>10}"
            if warm:
                baseline = warm[0]["curve"]
                reached = minutes_to_reach(result["curve"], baseline[-1][2])
                line += f"{baseline[-1][0] / reached:>11.2f}x" if reached else f"{'-':>12}"
            print(line)
            for label, kid, seconds in result.get("samplers", []):
                print(f"    sampler {label:<32} KID {kid:.4f}  {seconds:.1f} s for "
                      f"{args.held_out} images")  # fmt: skip
    if args.plot:
        plot(results, refs, args.plot)
        print(f"\nwrote {args.plot}")
    if args.side_by_side and args.save_dir:
        side_by_side(results, args, recipes[0], recipes[-1])
        print(f"wrote {args.side_by_side}")


def side_by_side(results, args, left, right):
    """Samples of two recipes after the same CPU minutes, same seed, a row
    per data set, with the minutes and KID under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    figure, axes = plt.subplots(len(datasets), 2, figsize=(10, 2.6 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for column, recipe in enumerate((left, right)):
            result = next(r for r in results if r["dataset"] == dataset and r["recipe"] == recipe)
            trained = result.get("same_as", recipe)
            samples = np.load(os.path.join(args.save_dir, f"{dataset}_{trained}.keras.samples.npy"))
            grid = np.concatenate(
                [np.concatenate(list(samples[r * 5 : r * 5 + 5]), axis=1) for r in range(2)]
            )
            minutes, steps, kid = result["curve"][-1]
            axis = axes[row][column]
            axis.imshow(np.clip(grid, 0, 1), interpolation="nearest")
            axis.set_axis_off()
            axis.set_title(
                f"{recipe} recipe, {dataset}: {minutes:.0f} CPU min ({steps} steps), KID {kid:.4f}",
                fontsize=9,
            )
    figure.tight_layout()
    figure.savefig(args.side_by_side, dpi=100)


if __name__ == "__main__":
    main()
