"""Quality at the same number of steps: a recipe after S steps against the book's after 3 S.

    python bench/steps.py                                  # 392 steps, flowers and glyphs
    python bench/steps.py --steps 200 --datasets flowers   # shorter
    python bench/steps.py --recipes default,lr2e-3_cosine  # other candidates

`bench/quality.py` races recipes on CPU minutes; this asks the other question
a user with a fixed number of steps asks (the time-to-quality issue's "at the
same 392 steps of 64 at 32x32, samples as good as the book recipe gives after
three times the steps"). The reference, `book_ema_warmup` (the book's recipe
with the EMA warm-up, so that its early samples are not the initial
weights'), trains `--factor` x `--steps` steps with a KID mark at every
multiple of `--steps`; each candidate trains `--steps` steps, its learning-rate
schedule sized to them. Every run is a fresh process at 32x32 with the same
seed and data; KID is measured on `--held-out` images the runs never saw, from
the same seeded noise, with the book's sampler (DDIM, 20 steps) and with
generate.py's default (DPM-Solver++(2M), 5 log-SNR steps), and with that
solver at 10 steps, each in two feature spaces: `--features` (random
features offline) and `bench/trained_features.py`'s (a classifier of the
data set's real images, which sees what random features miss on the
glyphs: their shape). Steps, not
minutes, so a busy machine changes nothing but the wall time. Run by hand,
never by CI.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

from quality import (  # noqa: E402
    FEATURE_CHOICES,
    RECIPES,
    bench_features,
    kid_between,
    package_first,
    recipe_config,
    recipe_run,
)

REFERENCE = "book_ema_warmup"
SAMPLINGS = {
    "ddim20": dict(diffusion_steps=20),
    "dpmpp5": dict(diffusion_steps=5, sampler="dpmpp_2m", spacing="log_snr"),
    "dpmpp10": dict(diffusion_steps=10, sampler="dpmpp_2m", spacing="log_snr"),
}


def worker(args):
    """Trains one recipe for `args.run_steps` steps; prints one JSON line."""
    package_first()
    import keras

    config = recipe_config(args.recipe, args)
    model, dataset, real, extractor, settle = recipe_run(config, args, args.run_steps)
    trained = bench_features("trained", args.dataset, args.image_size)
    marks = list(range(args.steps, args.run_steps + 1, args.steps))
    curve = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 in marks:
                settle(batch + 1)
                kids, trained_kids = {}, {}
                for name, sampling in SAMPLINGS.items():
                    images = model.generate(len(real), seed=args.seed, **sampling)
                    kids[name] = kid_between(extractor, real, images)
                    trained_kids[name] = kid_between(trained, real, images)
                curve.append(dict(steps=batch + 1, **kids, trained=trained_kids))
                print(f"{args.dataset} {args.recipe}: {batch + 1} steps, KID {kids}",
                      file=sys.stderr, flush=True)  # fmt: skip
                if batch + 1 == marks[-1]:
                    self.model.stop_training = True

    model.fit(dataset, steps_per_epoch=10**7, epochs=1, verbose=0, callbacks=[Marks()])
    print(json.dumps(dict(recipe=args.recipe, dataset=args.dataset, curve=curve,
                          features=extractor.name)))  # fmt: skip


def run_worker(args, recipe, dataset, run_steps):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1")
    command = [
        sys.executable, __file__, "--worker", "--recipe", recipe, "--dataset", dataset,
        "--run-steps", str(run_steps), "--steps", str(args.steps), "--image-size",
        str(args.image_size), "--seed", str(args.seed), "--held-out", str(args.held_out),
        "--features", args.features, "--precision", args.precision,
    ]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=392, help="steps a candidate trains")
    parser.add_argument("--factor", type=int, default=3, help="the reference trains this x more")
    parser.add_argument("--datasets", default="flowers,glyphs")
    parser.add_argument("--recipes", default="default")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--features", default="auto", choices=FEATURE_CHOICES)
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "auto"])  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default=None, help="keep each result here as JSON")
    parser.add_argument("--reuse", action="store_true",
                        help="with --save-dir: take results kept there, not train")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--run-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.held_out < 128 or args.held_out % 128:
        raise SystemExit("--held-out: a multiple of 128 (KID averages subsets of 128 images)")
    recipes = [r for r in args.recipes.split(",") if r != REFERENCE]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; precision {args.precision}")
    for dataset in args.datasets.split(","):
        results = {}
        for recipe in [REFERENCE, *recipes]:
            run_steps = args.steps * (args.factor if recipe == REFERENCE else 1)
            saved = os.path.join(args.save_dir or "", f"{dataset}_{recipe}_{run_steps}.json")
            if args.reuse and os.path.exists(saved):
                with open(saved) as handle:
                    results[recipe] = json.load(handle)
            else:
                results[recipe] = run_worker(args, recipe, dataset, run_steps)
                if args.save_dir:
                    os.makedirs(args.save_dir, exist_ok=True)
                    with open(saved, "w") as handle:
                        json.dump(results[recipe], handle)
        for features, kids_of in (
            (results[REFERENCE]["features"], lambda mark: mark),
            ("trained", lambda mark: mark.get("trained")),
        ):
            report(dataset, args, results, recipes, features, kids_of)


def report(dataset, args, results, recipes, features, kids_of):
    """One table: the reference's marks and each recipe's final KIDs, in the
    features `kids_of(mark)` picks (a run without them is left out)."""
    reference = [kids_of(mark) | dict(steps=mark["steps"]) for mark in results[REFERENCE]["curve"]
                 if kids_of(mark)]  # fmt: skip
    if not reference:
        return
    names = " / ".join(SAMPLINGS)
    print(f"\n{dataset}, {args.image_size}x{args.image_size}, KID ({features} features; lower "
          f"is better), {names}:")  # fmt: skip
    for mark in reference:
        kids = " / ".join(f"{mark[s]:.4f}" for s in SAMPLINGS)
        print(f"  {REFERENCE:<24} at {mark['steps']:>5} steps: {kids}")
    goal = reference[-1]
    for recipe in recipes:
        last = results[recipe]["curve"][-1]
        final = kids_of(last)
        if not final:
            continue
        kids = " / ".join(f"{final[s]:.4f}" for s in SAMPLINGS)
        verdict = all(final[s] <= goal[s] for s in SAMPLINGS)
        print(f"  {recipe:<24} at {last['steps']:>5} steps: {kids}  as good as the "
              f"reference at {goal['steps']}: {'yes' if verdict else 'no'}")  # fmt: skip


if __name__ == "__main__":
    main()
