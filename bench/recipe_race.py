"""Recipes and samplers raced on real photographs and landscapes, scored by
classifiers that know the real images.

    python bench/recipe_race.py                      # the race of docs/results/real-data.md
    python bench/recipe_race.py --sets photos --recipes default,ema_power
    python bench/recipe_race.py --save-dir runs/race --reuse     # finish an interrupted race

Each recipe (`quality.RECIPES`; `name@steps` trains that many steps instead
of `--steps`) trains the book's U-Net at 32x32 on 4,096 images of a bench
set (`bench/real_sets.py`, seed 0) in a fresh process, for `--steps` steps
of 64 (the CPU minutes are printed). Then each sampler of `--samplers`
(`SAMPLERS` below) generates `--count` images from the same seed, and they
are scored (`bench/set_scores.py`) twice:

- by the **bench** classifier against the bench's held-out images, and
- by the **check** classifier, trained on other images from another
  initialisation, against a second held-out split, which stands for an
  outside check on real data;

with the random-feature KID of `bench/quality.py` beside them. The last
table gives, per scorer, Spearman's rank correlation between its distances
and the check's over every (recipe, sampler) pair: how well a bench
predicts held-out data. Results are JSON lines in `--save-dir`; run by hand,
never by CI.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from real_sets import TRAIN_IMAGES  # noqa: E402

# name: generate() settings. "default" is whatever generate.py does unless
# told (`SAMPLING_RECIPES["default"]`; the library's `generate()` keeps the book's).
SAMPLERS = {
    "default": None,
    "book (ddim 20)": dict(sampler="ddim", diffusion_steps=20, spacing="uniform"),
    "dpmpp_2m 5 log_snr": dict(sampler="dpmpp_2m", diffusion_steps=5, spacing="log_snr"),
    "dpmpp_2m 10 log_snr": dict(sampler="dpmpp_2m", diffusion_steps=10, spacing="log_snr"),
    "ddim 10 eta 1": dict(sampler="ddim", diffusion_steps=10, spacing="uniform", eta=1.0),
    "ddim 20 eta 1": dict(sampler="ddim", diffusion_steps=20, spacing="uniform", eta=1.0),
    "ddim 50 eta 1": dict(sampler="ddim", diffusion_steps=50, spacing="uniform", eta=1.0),
    "ddim 20 eta 0.5": dict(sampler="ddim", diffusion_steps=20, spacing="uniform", eta=0.5),
    "sde-dpmpp_2m 10 log_snr": dict(sampler="dpmpp_2m", diffusion_steps=10, spacing="log_snr",
                                    eta=1.0),  # fmt: skip
    "sde-dpmpp_2m 20 log_snr": dict(sampler="dpmpp_2m", diffusion_steps=20, spacing="log_snr",
                                    eta=1.0),  # fmt: skip
    "sde-dpmpp_2m 10 uniform": dict(sampler="dpmpp_2m", diffusion_steps=10, spacing="uniform",
                                    eta=1.0),  # fmt: skip
    # EDM's sampler (Karras et al. 2022): Heun's steps, 2 x steps - 1 evaluations, on
    # its own spacing or the default's, with a share of its largest churn (eta).
    "heun 5 karras": dict(sampler="heun", diffusion_steps=5, spacing="karras"),
    "heun 5 karras eta 0.5": dict(sampler="heun", diffusion_steps=5, spacing="karras",
                                  eta=0.5),  # fmt: skip
    "heun 5 karras eta 1": dict(sampler="heun", diffusion_steps=5, spacing="karras", eta=1.0),
    "heun 5 uniform eta 1": dict(sampler="heun", diffusion_steps=5, spacing="uniform",
                                 eta=1.0),  # fmt: skip
    "heun 4 karras eta 1": dict(sampler="heun", diffusion_steps=4, spacing="karras", eta=1.0),
    "heun 6 karras eta 1": dict(sampler="heun", diffusion_steps=6, spacing="karras", eta=1.0),
    "sde-dpmpp_2m 10 karras": dict(sampler="dpmpp_2m", diffusion_steps=10, spacing="karras",
                                   eta=1.0),  # fmt: skip
    "heun 8 karras eta 1": dict(sampler="heun", diffusion_steps=8, spacing="karras", eta=1.0),
    "heun 10 karras eta 1": dict(sampler="heun", diffusion_steps=10, spacing="karras",
                                 eta=1.0),  # fmt: skip
}
RACE_SAMPLERS = "book (ddim 20),dpmpp_2m 5 log_snr,ddim 20 eta 1,sde-dpmpp_2m 10 log_snr"


def parse_recipe(text, steps):
    name, _, count = text.partition("@")
    return name, int(count) if count else steps


def sampler_settings(label):
    """The `generate()` settings of sampler `label`."""
    from diffusion_keras.config.sampling import SAMPLING_RECIPES

    settings = SAMPLERS[label]
    return dict(SAMPLING_RECIPES["default"]) if settings is None else dict(settings)


def score_samplers(model, args, result):
    """Generates `args.count` images with each of `args.samplers` and adds
    their scores to `result["samplers"]`."""
    import numpy as np
    from quality import kid_between
    from set_scores import SPLITS, Scorer

    from diffusion_keras.metrics.kid import feature_extractor

    scorers = {role: Scorer(args.set, args.size, args.count, role) for role in SPLITS}
    random_features = feature_extractor("random", args.size)
    for label in args.samplers.split(","):
        begin = time.perf_counter()
        generated = model.generate(args.count, seed=args.seed, **sampler_settings(label))
        seconds = time.perf_counter() - begin
        scores = {role: scorer.score(generated) for role, scorer in scorers.items()}
        scores["random_kid"] = kid_between(random_features, scorers["bench"].real, generated)
        scores["seconds"] = seconds
        result["samplers"][label] = scores
        print(f"{args.set} {args.recipe} {label}: bench {scores['bench']['distance']:.3f} "
              f"check {scores['check']['distance']:.3f} coverage "
              f"{scores['check']['coverage']:.3f}", file=sys.stderr, flush=True)  # fmt: skip
        if args.save:
            np.save(f"{args.save}.{label.replace(' ', '_')}.npy", generated[:16])


def sweep_worker(args):
    """Scores every sampler of `args.samplers` (with `--rescore`, the
    samplers already scored) on a saved model; one JSON line."""
    from quality import package_first

    package_first()
    import keras

    with open(args.save[: -len(".keras")] + ".json") as handle:
        result = json.load(handle)
    if args.rescore:
        args.samplers = ",".join(result["samplers"])
    result["samplers"] = {}
    score_samplers(keras.models.load_model(args.save), args, result)
    print(json.dumps(result))


def worker(args):
    """Trains one recipe on one set, then scores each sampler; one JSON line."""
    from quality import cpu_seconds, package_first, recipe_config

    package_first()
    import numpy as np
    from real_sets import set_images

    from diffusion_keras.data.datasets import ImageData, train_dataset
    from diffusion_keras.training.run import build_model

    name, steps = parse_recipe(args.recipe, args.steps)
    args.image_size = args.size
    config = recipe_config(name, args)
    images, _ = set_images(args.set, TRAIN_IMAGES, args.size, seed=0)
    data = ImageData(images, source=args.set)
    model = build_model(config, total_steps=steps)
    model.adapt(images.astype(np.float32) / 255.0)
    dataset = train_dataset(data, config.batch_size, 1, seed=args.seed, flip=config.flip)
    callbacks = []
    if config.precise_bn_batches:
        from diffusion_keras.training.precise_bn import PreciseBatchNorm

        callback = PreciseBatchNorm(data, config.precise_bn_batches, config.batch_size,
                                    config.seed)  # fmt: skip
        callback.set_model(model)
        callbacks.append(callback)
    begin, wall = cpu_seconds(), time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    for callback in callbacks:
        callback.on_epoch_end(0)
    minutes = (cpu_seconds() - begin) / 60.0
    result = dict(set=args.set, recipe=args.recipe, steps=steps, cpu_minutes=minutes,
                  wall_minutes=(time.perf_counter() - wall) / 60.0, samplers={})  # fmt: skip
    if args.save:
        model.save(args.save)
    score_samplers(model, args, result)
    print(json.dumps(result))


def spearman(a, b):
    import numpy as np

    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def markdown(results):
    """The race as Markdown tables, one per set, for docs/results/."""
    from diffusion_keras.sampling.rules import network_evaluations

    lines = []
    for name in dict.fromkeys(r["set"] for r in results):
        lines += [f"**{name}**", "",
                  "| recipe | steps | CPU min | sampler | evaluations | bench distance | "
                  "check distance | coverage | real | plain distance | plain coverage | "
                  "random KID |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for result in results:
            if result["set"] != name:
                continue
            for label, s in result["samplers"].items():
                settings = sampler_settings(label)
                evaluations = network_evaluations(settings["sampler"],
                                                  settings["diffusion_steps"])  # fmt: skip
                lines.append(
                    f"| {result['recipe']} ({result.get('precision', 'float32')}) | "
                    f"{result['steps']} | {result['cpu_minutes']:.1f} | {label} | {evaluations} | "
                    f"{s['bench']['distance']:.2f} | {s['check']['distance']:.2f} | "
                    f"{s['check']['coverage']:.3f} | {s['check']['real']:.2f} | "
                    f"{plain(s, 'distance'):.2f} | {plain(s, 'coverage'):.3f} | "
                    f"{s['random_kid']:.4f} |"
                )
        lines.append("")
    return "\n".join(lines)


def samples_png(results, args):
    """`args.grid`: a row of each (set, recipe, sampler of `--samplers`)'s kept
    samples (the first 16 of each, `*.keras.LABEL.npy` in `--save-dir`),
    the rows in the order of `--sets`, `--recipes` and `--samplers`."""
    import numpy as np
    from quality import pixel_grid

    rows = []
    for result in results:
        stem = f"{result['set']}_{result['recipe']}_{result.get('precision', 'float32')}"
        for label in args.samplers.split(","):
            path = os.path.join(args.save_dir, f"{stem}.keras.{label.replace(' ', '_')}.npy")
            if os.path.exists(path):
                rows.append(np.load(path)[: args.grid_columns])
                print(f"grid row {len(rows)}: {result['set']} {result['recipe']} {label}")
    pixel_grid(np.concatenate(rows), args.grid, len(rows[0]))
    print(f"grid: {args.grid}")


def plain(scores, name):
    """The plain classifier's `name` score, or NaN where it did not score."""
    return scores["plain"][name] if "plain" in scores else float("nan")


def report(results, args):
    print(f"\n{'set':<11}{'recipe':<24}{'steps':>6}{'CPU min':>8}  {'sampler':<26}"
          f"{'bench dist':>11}{'check dist':>11}{'coverage':>9}{'real':>6}"
          f"{'plain dist':>11}{'plain cov':>10}{'rand KID':>9}")  # fmt: skip
    pairs = []
    for result in results:
        for label, s in result["samplers"].items():
            print(f"{result['set']:<11}{result['recipe']:<24}{result['steps']:>6}"
                  f"{result['cpu_minutes']:>8.1f}  {label:<26}{s['bench']['distance']:>11.3f}"
                  f"{s['check']['distance']:>11.3f}{s['check']['coverage']:>9.3f}"
                  f"{s['check']['real']:>6.2f}{plain(s, 'distance'):>11.3f}"
                  f"{plain(s, 'coverage'):>10.3f}{s['random_kid']:>9.4f}")  # fmt: skip
            pairs.append((result["set"], s))
    for role in ("check", "plain"):
        print(f"\nAgreement with the {role} distance (Spearman over recipe x sampler):")
        for name in sorted({p[0] for p in pairs}):
            rows = [s for set_name, s in pairs if set_name == name and role in s]
            if len(rows) < 3:
                continue
            check = [s[role]["distance"] for s in rows]
            bench = spearman([s["bench"]["distance"] for s in rows], check)
            print(f"  {name}: bench distance {bench:.2f}"
                  f", bench KID {spearman([s['bench']['kid'] for s in rows], check):.2f}"
                  f", random-feature KID {spearman([s['random_kid'] for s in rows], check):.2f}"
                  f"  ({len(rows)} pairs)")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="photos,landscapes")
    parser.add_argument("--recipes",
                        default="book_ema_warmup@1176,book_ema_warmup,default,cosine_to_zero,"
                        "ema_power")  # fmt: skip
    parser.add_argument("--steps", type=int, default=392)
    parser.add_argument("--samplers", default=RACE_SAMPLERS)
    parser.add_argument("--count", type=int, default=384, help="images generated and held out")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--precision", default="float32",
                        help="float32, mixed_bfloat16 or auto; comma-separated to race several")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="runs/recipe_race")
    parser.add_argument("--reuse", action="store_true", help="take results kept in --save-dir")
    parser.add_argument("--report", action="store_true", help="only print --save-dir's results")
    parser.add_argument("--markdown", action="store_true", help="with --report: Markdown tables")
    parser.add_argument("--rescore", action="store_true",
                        help="score the kept models again, with every scorer of "
                        "set_scores.SPLITS (after one is added)")  # fmt: skip
    parser.add_argument("--sweep", action="store_true",
                        help="score every sampler (or --samplers) on the models kept in "
                        "--save-dir instead of training; results in *.sweep.json")  # fmt: skip
    parser.add_argument("--grid", metavar="PNG",
                        help="with --report: also a PNG of the kept samples, a row per set, "
                        "recipe and sampler")  # fmt: skip
    parser.add_argument("--grid-columns", type=int, default=12)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return sweep_worker(args) if args.sweep or args.rescore else worker(args)
    if args.sweep and args.samplers == RACE_SAMPLERS:
        args.samplers = ",".join(SAMPLERS)
    unknown = [s for s in args.samplers.split(",") if s not in SAMPLERS]
    if unknown:
        raise SystemExit(f"--samplers: unknown {unknown}; choose from {list(SAMPLERS)}")
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    if not args.markdown:
        print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; "
              f"precision {args.precision}")
    os.makedirs(args.save_dir, exist_ok=True)
    results = []
    precisions = args.precision.split(",")
    for name, recipe, precision in (
        (n, r, p) for n in args.sets.split(",") for r in args.recipes.split(",") for p in precisions
    ):
        args.precision = precision
        stem = os.path.join(args.save_dir, f"{name}_{recipe}_{args.precision}")
        kept = stem + (".sweep.json" if args.sweep else ".json")
        if args.rescore:
            if not os.path.exists(kept):
                continue
            with open(kept) as handle:
                if "plain" in next(iter(json.load(handle)["samplers"].values())):
                    continue
        elif (args.reuse or args.report) and os.path.exists(kept):
            with open(kept) as handle:
                results.append(json.load(handle))
            continue
        if args.report:
            continue
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1")
        command = [sys.executable, __file__, "--worker", "--set", name, "--recipe", recipe,
                   "--steps", str(args.steps), "--samplers", args.samplers, "--count",
                   str(args.count), "--size", str(args.size), "--precision", args.precision,
                   "--seed", str(args.seed), "--save", stem + ".keras"]  # fmt: skip
        command += ["--sweep"] * args.sweep + ["--rescore"] * args.rescore
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"worker failed: {' '.join(command)}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["precision"] = args.precision
        with open(kept, "w") as handle:
            json.dump(result, handle)
        results.append(result)
    if args.markdown:
        print(markdown(results))
    else:
        report(results, args)
    if args.grid:
        samples_png(results, args)


if __name__ == "__main__":
    main()
