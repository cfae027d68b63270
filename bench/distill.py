"""Few-step students against their teacher and the solvers, on the same images.

    python bench/distill.py                                  # flowers and glyphs
    python bench/distill.py --datasets flowers --save-dir runs/bench_distill
    python bench/distill.py --save-dir runs/bench_distill --reuse   # finish a bench
    python bench/distill.py --variant budget0.6 --save-dir runs/bench_distill --reuse
    python bench/distill.py --student-etas 0,0.5,1 --save-dir runs/bench_distill --reuse
    python bench/distill.py --more-teacher "DDIM 4,EDM 5" --save-dir runs/bench_distill --reuse
    python bench/distill.py --datasets photos,landscapes --save-dir runs/bench_distill_real
    python bench/distill.py --speed-only                     # images/s at 64x64 only

For each data set (`builtin:flowers` and the rendered glyphs, `--held-out`
images kept aside as the KID reference, as `bench/quality.py` does; or with
`--datasets photos,landscapes` the real-photo and landscape sets of issue 38,
`bench/real_sets.py`, 4,096 training images, scored by `bench/set_scores.py`'s
classifiers of held-out real images) the bench

1. trains a teacher at 32x32 with train.py's default recipe for about
   `--teacher-steps` steps of 64, and records its process's CPU seconds;
2. distils it with `distill.py`'s defaults (or a `--variant` from `VARIANTS`),
   a 4-step student of the teacher's DDIM 12, then down to 1 (halving from 8, 16 or
   64 with `--variant from8`, `from16` or `from64`), and takes each round's CPU
   seconds from `rounds.csv`;
3. generates `--held-out` images from the same seeded noise with the teacher
   (DDIM at 20, 50 and 200 uniform steps; DPM-Solver++(2M) at 2, 3, 5 and 10
   log-SNR steps; `--more-teacher`: DDIM at the students' step counts and
   EDM's sampler) and with each student in its own steps (deterministic, and
   with each `--student-etas` share of fresh noise per step), and measures KID
   against the held-out images in two feature spaces: `--features` (random
   features offline) and `bench/trained_features.py`'s classifier (the real
   sets: the bench, check and plain classifiers' distances and the check's
   class coverage, as `bench/recipe_race.py` scores);
4. writes a table, a PNG of KID against network evaluations (`--plot`) and a
   grid of the teacher and each student from the same seeds (`--grid`).

Then, in one process at 64x64 with the book's network, it times the
images per second of the book's own DDIM-20 loop (`bench/book_baseline.py`),
our DDIM-20 and our DPM-Solver++ 5, and a 1-, 2- and 4-step student (the
speed does not depend on the weights), in turns, and prints each against the
book's loop. Every stage runs in a fresh process; with `--save-dir` each
stage's result is kept and `--reuse` takes it instead of running it again.
Run by hand, never by CI.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from quality import (  # noqa: E402
    FEATURE_CHOICES,
    bench_features,
    kid_between,
    load,
    package_first,
    pixel_grid,
)
from real_sets import SETS as REAL_SETS  # noqa: E402
from real_sets import TRAIN_IMAGES  # noqa: E402

from diffusion_keras.config.sampling import STUDENT_ETA  # noqa: E402

TEACHER_SAMPLINGS = {
    "DDIM 20": dict(sampler="ddim", diffusion_steps=20, spacing="uniform"),
    "DDIM 50": dict(sampler="ddim", diffusion_steps=50, spacing="uniform"),
    "DDIM 200": dict(sampler="ddim", diffusion_steps=200, spacing="uniform"),
    "DPM++ 2": dict(sampler="dpmpp_2m", diffusion_steps=2, spacing="log_snr"),
    "DPM++ 3": dict(sampler="dpmpp_2m", diffusion_steps=3, spacing="log_snr"),
    "DPM++ 5": dict(sampler="dpmpp_2m", diffusion_steps=5, spacing="log_snr"),
    "DPM++ 10": dict(sampler="dpmpp_2m", diffusion_steps=10, spacing="log_snr"),
}
# More of the teacher's samplers, measured with `--more-teacher A,B` and kept
# apart from the rows above (`kid_teacher_A_B.json`): DDIM at the students'
# own step counts, and EDM's sampler (generate.py's default for long runs).
MORE_TEACHER_SAMPLINGS = {
    "DDIM 12": dict(sampler="ddim", diffusion_steps=12, spacing="uniform"),
    "DDIM 8": dict(sampler="ddim", diffusion_steps=8, spacing="uniform"),
    "DDIM 4": dict(sampler="ddim", diffusion_steps=4, spacing="uniform"),
    "DDIM 2": dict(sampler="ddim", diffusion_steps=2, spacing="uniform"),
    "DDIM 1": dict(sampler="ddim", diffusion_steps=1, spacing="uniform"),
    "EDM 5": dict(sampler="heun", diffusion_steps=5, spacing="karras", eta=1.0),
    # The grids a student could copy (measured 2026-12-07: docs/results/distillation.md).
    "DDIM 8 log_snr": dict(sampler="ddim", diffusion_steps=8, spacing="log_snr"),
    "DDIM 8 karras": dict(sampler="ddim", diffusion_steps=8, spacing="karras"),
    "DDIM 8 span": dict(sampler="ddim", diffusion_steps=8, spacing="log_snr_span"),
    "DDIM 12 span": dict(sampler="ddim", diffusion_steps=12, spacing="log_snr_span"),
}
# Distillation settings over distill.py's defaults (`DistillConfig`).
VARIANTS = {
    # From the teacher's DDIM 12 in 3, then halving, the first round at 4x its
    # rate: the default since 2026-12-08 (save dirs of before hold "from8" as
    # "default"; the variants below that set no start were measured on the
    # default of their day: from 8 before 2026-12-08).
    "default": {},
    "uniform": dict(round_epochs=1),  # every round one epoch of all the images, no weights
    # Rounds from the teacher's DDIM 64, the same budget (the default until
    # 2026-12-06; save dirs of before then hold it as "default").
    "from64": dict(from_steps=64),
    # Rounds from the teacher's DDIM 16 (the default from 2026-12-06 to
    # 2026-12-07; save dirs of then hold it as "default").
    "from16": dict(from_steps=16),
    "from8": dict(from_steps=8),  # rounds 8 -> 4 -> 2 -> 1, the default from 2026-12-07 to -08
    "budget0.5": dict(budget=0.5),
    # A first round whose teacher takes 5 DDIM steps per student step: the
    # 4-step student copies the teacher's DDIM 20 at once, then 4 -> 2 -> 1, at
    # the plain rate (training.distill.FIRST_ROUND_RATE, a bench-only knob).
    "first20x5": dict(from_steps=20, first_substeps=5, first_rate=1.0),
    "first16x4": dict(from_steps=16, first_substeps=4, first_rate=1.0),
    # The same, its first round at 4x the rate (the rule since 2026-12-08): its
    # student starts farther from its target.
    "first20x5_lr4": dict(from_steps=20, first_substeps=5, first_rate=4.0),
    # A 4-step student of DDIM 12, at 1x; at 4x, the default since 2026-12-08.
    "first12x3": dict(from_steps=12, first_substeps=3, first_rate=1.0),
    "first12x3_lr4": dict(from_steps=12, first_substeps=3, first_rate=4.0),
    # (`from8_lr4`, the from-8 rounds' first round at 4x, measured on 2026-12-07,
    # is gone: the 4x rule now holds only for a first round of more than two
    # teacher steps a step.)
    # The from-8 budget split 1 : 3.5 : 3.5 over the 4-, 2- and 1-step rounds
    # instead of 2 : 3 : 3 (training.distill.ROUND_WEIGHTS, a bench-only knob).
    "split1_3.5_3.5": dict(from_steps=8, round_weights=dict(many=1.0, four=1.0, few=3.5)),
    "budget0.25": dict(budget=0.25),
    # The students' steps equal in log-SNR over the schedule's whole span
    # (`--spacing log_snr_span`), from 8: on the third photographs teacher its
    # DDIM 8 beat its uniform DDIM 20 by the check, on three others not (2026-12-07).
    "span": dict(spacing="log_snr_span", from_steps=8),
    # Both: the 4-step student of the teacher's DDIM 12 on that grid (its 4
    # times are every third of its 12), its round at 4x the rate.
    "span_first12x3_lr4": dict(spacing="log_snr_span", from_steps=12, first_substeps=3,
                               first_rate=4.0),  # fmt: skip
    # The rounds' rates, measured on 2026-12-06: the 1-step round's rate, and
    # N-step rounds at that x N^-power (training.distill.ROUND_RATE_POWER, a
    # bench-only knob). 2e-4 with 2/3 was the default until then ("default" in
    # save dirs of before), 1e-4 with 1 is the default since.
    "lr2e-4": dict(learning_rate=2e-4, rate_power=2.0 / 3.0),
    "lr1e-4": dict(learning_rate=1e-4, rate_power=2.0 / 3.0),
    "lr5e-5": dict(learning_rate=5e-5, rate_power=2.0 / 3.0),
    "lr1e-4_power1": dict(learning_rate=1e-4, rate_power=1.0),
    # Measured on 2026-12-07: the rate falling faster than 1 / N.
    "lr1e-4_power1.5": dict(learning_rate=1e-4, rate_power=1.5),
    "lr1e-4_power2": dict(learning_rate=1e-4, rate_power=2.0),
    "ema0.99": dict(ema=0.99),  # a shorter average of the student's weights
    # A round whose student switches prediction (the 1-step velocity student of
    # a noise teacher) at the plain rate, as before 2026-12-07
    # (training.distill.PREDICTION_SWITCH_RATE, a bench-only knob). Kept results
    # of the variants above from before then had this rule; run again, they
    # get the 4x rule.
    "switch1": dict(switch_rate=1.0),
}


def student_etas(args):
    return [float(eta) for eta in args.student_etas.split(",")]


def training_images(args):
    """`(training ImageData, held-out images in [0, 1] or None)` of
    `args.dataset`. A real-photo or landscape set (`bench/real_sets.py`)
    trains the teacher on as many images as `bench/recipe_race.py`'s recipes
    train on, and its images are scored by `bench/set_scores.py`'s
    classifiers of held-out real images (`scorers_of`), which agreed with
    held-out data in issue 38's race, where the flowers' and glyphs' trained
    features are blind to blur."""
    if args.dataset in REAL_SETS:
        from real_sets import set_images

        from diffusion_keras.data.datasets import ImageData

        images, _ = set_images(args.dataset, TRAIN_IMAGES, args.image_size, seed=0)
        return ImageData(images, source=args.dataset), None
    import numpy as np

    train_data, held_out = load(args.dataset, args.image_size, args.held_out, args.seed)
    return train_data, held_out.images.astype(np.float32) / 255.0


def scorers_of(args):
    """`({column: images -> score}, held-out real images, the random
    features' name)` of `args.dataset`: the KIDs in random and (flowers,
    glyphs) trained features, or (real sets) each classifier's scores."""
    if args.dataset in REAL_SETS:
        from set_scores import SPLITS, Scorer

        scorers = {role: Scorer(args.dataset, args.image_size, args.held_out, role)
                   for role in SPLITS}  # fmt: skip
        real = scorers["bench"].real
        random = bench_features(args.features, args.dataset, args.image_size)
        columns = {"random": lambda images: kid_between(random, real, images)}
        for role, scorer in scorers.items():
            columns[role] = lambda images, s=scorer: s.score(images)
        return columns, real, random.name
    _, real = training_images(args)
    extractors = {
        "random": bench_features(args.features, args.dataset, args.image_size),
        "trained": bench_features("trained", args.dataset, args.image_size),
    }
    columns = {name: lambda images, e=extractor: kid_between(e, real, images)
               for name, extractor in extractors.items()}  # fmt: skip
    return columns, real, extractors["random"].name


def score_columns(row):
    """A row's scores as flat columns, each lower-is-better but coverage:
    "random" and "trained" (KIDs), and for the real sets each classifier's
    distance and the check's coverage. (Kept results of before 2026-12-07
    hold the two KIDs in the row itself.)"""
    scores = row.get("scores") or {"random": row["random"], "trained": row["trained"]}
    columns = {}
    for name, value in scores.items():
        if isinstance(value, dict):
            columns[name] = value["distance"]
            if name == "check":
                columns["coverage"] = value["coverage"]
        else:
            columns[name] = value
    return columns


def column_title(name, features):
    if name == "random":
        return f"KID {features}"
    return name if name == "coverage" else f"{name} " + ("KID" if name == "trained" else "dist")


def more_teacher(args):
    labels = [label.strip() for label in args.more_teacher.split(",") if label.strip()]
    unknown = [label for label in labels if label not in MORE_TEACHER_SAMPLINGS]
    if unknown:
        raise SystemExit(f"--more-teacher: unknown {unknown}; choose from "
                         f"{', '.join(MORE_TEACHER_SAMPLINGS)}")  # fmt: skip
    return labels


def students_name(args):
    """The students' kept results: the variant's, and the etas' unless only 0."""
    etas = student_etas(args)
    return args.variant + ("" if etas == [0.0] else "_eta" + "_".join(f"{e:g}" for e in etas))


def stage_dir(args, dataset, *parts):
    return os.path.join(args.save_dir, dataset, *parts)


# -- stages, each in its own process -----------------------------------------


def teacher_stage(args):
    """Trains the teacher; prints its steps and CPU seconds."""
    package_first()
    from diffusion_keras.config.run import TrainConfig
    from diffusion_keras.data.datasets import steps_per_epoch
    from diffusion_keras.training.run import train

    train_data, _ = training_images(args)
    per_epoch = steps_per_epoch(train_data, 64, 1)
    config = TrainConfig.for_recipe(
        "default", image_size=args.image_size, seed=args.seed, precision=args.precision,
        data=f"bench:{args.dataset}", batch_size=64, dataset_repetitions=1,
        epochs=max(1, round(args.teacher_steps / per_epoch)),
        output=stage_dir(args, args.dataset, "teacher"),
    )  # fmt: skip
    started = time.process_time(), time.monotonic()
    model = train(config, data=train_data, verbose=0, overwrite=True)
    print(json.dumps(dict(
        steps=int(model.train_steps.numpy()),
        cpu_seconds=time.process_time() - started[0],
        wall_seconds=time.monotonic() - started[1],
    )))  # fmt: skip


def distill_stage(args):
    """Distils the teacher as `args.variant` says; prints the rounds."""
    package_first()
    from diffusion_keras.config.distill import DistillConfig
    from diffusion_keras.training.distill import distill, distill_paths

    train_data, _ = training_images(args)
    output = stage_dir(args, args.dataset, f"distilled_{args.variant}")
    settings = dict(VARIANTS[args.variant])
    from diffusion_keras.training import distill as rounds

    # Bench-only knobs: module constants of training.distill.
    knobs = dict(rate_power="ROUND_RATE_POWER", switch_rate="PREDICTION_SWITCH_RATE",
                 round_weights="ROUND_WEIGHTS", first_rate="FIRST_ROUND_RATE")  # fmt: skip
    for key, constant in knobs.items():
        if key in settings:
            setattr(rounds, constant, settings.pop(key))
    config = DistillConfig(
        teacher=os.path.join(stage_dir(args, args.dataset, "teacher"), "model.keras"),
        output=output, precision=args.precision, seed=args.seed, **settings,
    )  # fmt: skip
    # A distillation left here (stopped, or with rounds removed to run them
    # again) is continued: its finished rounds are kept.
    resume = os.path.exists(distill_paths(output)["config"])
    distill(config, data=train_data, verbose=0, resume=resume, overwrite=not resume)
    with open(distill_paths(output)["rounds_csv"]) as handle:
        rounds = list(csv.DictReader(handle))
    print(json.dumps(rounds))


def evaluate_stage(args):
    """KID of the teacher's samplers, or with `--students` of each student of
    the variant's distillation; prints them."""
    package_first()
    import numpy as np

    from diffusion_keras.models.saving import load_model
    from diffusion_keras.training.distill_files import round_dir

    columns, real, features = scorers_of(args)
    rows, grid = [], {}

    def measure(label, model, nfe, **sampling):
        model.generate(8, seed=args.seed, **sampling)  # traced outside the timing
        begin = time.perf_counter()
        images = model.generate(len(real), seed=args.seed, **sampling)
        seconds = time.perf_counter() - begin
        scores = {name: score(images) for name, score in columns.items()}
        rows.append(dict(label=label, nfe=nfe, images_per_second=len(real) / seconds,
                         scores=scores))  # fmt: skip
        grid[label] = images[: args.grid_images]
        print(f"{args.dataset} {label}: {scores}", file=sys.stderr, flush=True)

    if args.students:
        output = stage_dir(args, args.dataset, f"distilled_{args.variant}")
        for steps in (32, 16, 8, 4, 2, 1):
            path = os.path.join(round_dir(output, steps), "model.keras")
            if steps <= args.largest_student and os.path.exists(path):
                student = load_model(path, compile=False)
                for eta in student_etas(args):
                    # A 1-step student's only step ends at the image: no fresh noise.
                    if eta == 0 or steps > 1:
                        label = f"student {steps}" + (f" eta {eta:g}" if eta else "")
                        measure(label, student, steps, eta=eta)
    else:
        from diffusion_keras.sampling.rules import network_evaluations

        teacher = load_model(os.path.join(stage_dir(args, args.dataset, "teacher"),
                                          "model.keras"), compile=False)  # fmt: skip
        samplings = (
            {label: MORE_TEACHER_SAMPLINGS[label] for label in more_teacher(args)}
            if args.more else TEACHER_SAMPLINGS
        )  # fmt: skip
        for label, sampling in samplings.items():
            nfe = network_evaluations(sampling["sampler"], sampling["diffusion_steps"])
            measure(f"teacher {label}", teacher, nfe, **sampling)
    np.savez_compressed(args.grid_file, **grid)
    print(json.dumps(dict(rows=rows, features=features)))


def speed_stage(args):
    """Images/s at 64x64: the book's DDIM-20 loop, ours, and students, in turns."""
    package_first()
    import keras
    import numpy as np
    from book_baseline import BookDiffusionModel

    from diffusion_keras import DiffusionModel

    size, count = 64, args.speed_images
    book = BookDiffusionModel(image_size=size, batch_size=count)
    images = np.random.default_rng(0).uniform(size=(count, size, size, 3)).astype("float32")
    book.normalizer.adapt(images)
    noise = keras.random.normal((count, size, size, 3), seed=0)
    runs = {"book DDIM 20 loop": lambda: book.generate(count, 20, noise)}
    ours = DiffusionModel(image_size=size, seed=0, precision=args.precision)
    ours.adapt(images)
    runs["ours DDIM 20"] = lambda: ours.generate(count, 20, seed=0, sampler="ddim")
    runs["ours DPM++ 5"] = lambda: ours.generate(count, 5, seed=0, sampler="dpmpp_2m",
                                                 spacing="log_snr")  # fmt: skip
    for steps in (4, 2, 1):
        student = DiffusionModel(image_size=size, seed=0, precision=args.precision,
                                 student_steps=steps)  # fmt: skip
        student.adapt(images)
        runs[f"student {steps}"] = lambda s=student: s.generate(count, seed=0)
    for run in runs.values():
        run()  # built and traced outside the timing
    seconds = {name: [] for name in runs}
    for _ in range(args.speed_repeats):
        for name, run in runs.items():
            begin = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - begin)
    print(json.dumps({name: count / float(np.median(s)) for name, s in seconds.items()}))


STAGES = dict(teacher=teacher_stage, distill=distill_stage, evaluate=evaluate_stage,
              speed=speed_stage)  # fmt: skip


# -- the orchestrator ---------------------------------------------------------


def run_stage(args, stage, dataset="", saved=None, *extra):
    if saved and args.reuse and os.path.exists(saved):
        with open(saved) as handle:
            return json.load(handle)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1")
    command = [
        sys.executable, __file__, "--stage", stage, "--dataset", dataset, "--save-dir",
        args.save_dir, "--image-size", str(args.image_size), "--held-out", str(args.held_out),
        "--seed", str(args.seed), "--features", args.features, "--precision", args.precision,
        "--teacher-steps", str(args.teacher_steps), "--variant", args.variant,
        "--speed-images", str(args.speed_images), "--speed-repeats", str(args.speed_repeats),
        "--grid-images", str(args.grid_images), "--student-etas", args.student_etas,
        "--more-teacher", args.more_teacher, *extra,
    ]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"stage failed: {' '.join(command)}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if saved:
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        with open(saved, "w") as handle:
            json.dump(result, handle)
    return result


def report(dataset, teacher, rounds, evaluated):
    rows = evaluated["rows"]
    print(f"\n{dataset}: teacher {teacher['steps']} steps, {teacher['cpu_seconds'] / 60:.1f} "
          f"CPU min ({teacher['wall_seconds'] / 60:.1f} wall)")  # fmt: skip
    total = 0.0
    for row in rounds:
        cpu = float(row["cpu_seconds"])
        total += cpu
        print(f"  round {row['teacher_steps']:>3} -> {row['steps']:>2} steps: "
              f"{row['training_steps']} training steps, {cpu / 60:.2f} CPU min")  # fmt: skip
    print(f"  distillation total: {total / 60:.1f} CPU min = "
          f"{total / teacher['cpu_seconds']:.2f} x the teacher's training")  # fmt: skip
    by = {row["label"]: score_columns(row) for row in rows}
    names = list(by[rows[0]["label"]])
    titles = [column_title(name, evaluated["features"]) for name in names]
    print(f"  {'sampler':<20} {'NFE':>4} " + " ".join(f"{t:>14}" for t in titles)
          + f" {'images/s':>9}")  # fmt: skip
    for row in rows:
        print(f"  {row['label']:<20} {row['nfe']:>4} "
              + " ".join(f"{by[row['label']][name]:>14.4f}" for name in names)
              + f" {row['images_per_second']:>9.1f}")  # fmt: skip
    # Each student's target: (the reference row, the factor it may be off by).
    targets = {"student 4": ("teacher DDIM 20", 1.0), "student 2": ("teacher DPM++ 5", 1.0),
               "student 1": ("teacher DDIM 20", 2.0)}  # fmt: skip
    for row in rows:
        reference, factor = targets.get(row["label"].split(" eta ")[0], (None, None))
        if reference not in by:
            continue
        mine, theirs = by[row["label"]], by[reference]
        verdict = " / ".join(
            f"{name} {mine[name]:.4f} <= {factor:g} x {theirs[name]:.4f}: "
            f"{'yes' if mine[name] <= factor * theirs[name] else 'no'}"
            for name in names
            if name != "coverage"
        )
        print(f"  target {row['label']} vs {reference}: {verdict}")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(10, 3.6 * len(results)), squeeze=False)
    for row_axes, (dataset, evaluated) in zip(axes, results.items()):
        # Random-feature KID, and the trained features' KID or (real sets) the check's distance.
        second = "trained" if "trained" in score_columns(evaluated["rows"][0]) else "check"
        for axis, features in zip(row_axes, ("random", second)):
            for prefix, marker in (("teacher DDIM", "o-"), ("teacher DPM++", "s-"),
                                   ("teacher EDM", "D"), ("student", "^-")):  # fmt: skip
                rows = sorted((r for r in evaluated["rows"]
                               if r["label"].startswith(prefix) and " eta " not in r["label"]),
                              key=lambda r: r["nfe"])  # fmt: skip
                if rows:
                    axis.plot([r["nfe"] for r in rows],
                              [score_columns(r)[features] for r in rows], marker,
                              label=prefix)  # fmt: skip
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("network evaluations per image")
            axis.set_ylabel(column_title(features, evaluated["features"]))
            axis.set_title(dataset)
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"\nplot: {path}")


def grid_png(grids, path):
    import numpy as np

    rows = []
    for dataset, (teacher_file, students_file) in grids.items():
        with np.load(teacher_file) as teacher, np.load(students_file) as students:
            labels = ["teacher DDIM 200", "teacher DDIM 20", "teacher DPM++ 2"]
            rows.extend(teacher[label] for label in labels)
            rows.extend(students[label] for label in students)
            print(f"grid rows, {dataset}: {', '.join(labels + list(students))}")
    pixel_grid(np.concatenate(rows), path, len(rows[0]))
    print(f"grid: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="flowers,glyphs",
                        help="flowers, glyphs, photos, landscapes")  # fmt: skip
    parser.add_argument("--variant", default="default", choices=list(VARIANTS))
    parser.add_argument(
        "--student-etas",
        default=f"0,{STUDENT_ETA:g}",
        help="shares of fresh noise per step the students sample with, comma-separated "
        f"(0: deterministic DDIM, as they were taught; {STUDENT_ETA:g}: their default, "
        "STUDENT_ETA)",
    )
    parser.add_argument(
        "--more-teacher",
        default="",
        help="more of the teacher's samplers to measure, comma-separated: "
        + ", ".join(MORE_TEACHER_SAMPLINGS),
    )
    parser.add_argument("--teacher-steps", type=int, default=392)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--features", default="auto", choices=FEATURE_CHOICES)
    parser.add_argument("--precision", default="auto",
                        choices=["float32", "mixed_bfloat16", "auto"])  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="runs/bench_distill")
    parser.add_argument("--reuse", action="store_true", help="take kept stage results")
    parser.add_argument("--plot", default="runs/bench_distill/kid_by_nfe.png")
    parser.add_argument("--grid", default="runs/bench_distill/teacher_and_students.png")
    parser.add_argument("--grid-images", type=int, default=8)
    parser.add_argument("--speed-images", type=int, default=10)
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--largest-student", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--grid-file", help=argparse.SUPPRESS)
    parser.add_argument("--students", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--more", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return STAGES[args.stage](args)
    more_labels = more_teacher(args)  # checked before any work
    if args.held_out < 128 or args.held_out % 128:
        raise SystemExit("--held-out: a multiple of 128 (KID averages subsets of 128 images)")
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; precision {args.precision}",
          flush=True)  # fmt: skip
    results, grids = {}, {}
    for dataset in [] if args.speed_only else args.datasets.split(","):
        keep = lambda name, d=dataset: stage_dir(args, d, name)  # noqa: E731
        teacher = run_stage(args, "teacher", dataset, keep("teacher.json"))
        rounds = run_stage(args, "distill", dataset, keep(f"rounds_{args.variant}.json"))
        grids[dataset] = [keep("grid_teacher.npz"), keep(f"grid_{students_name(args)}.npz")]
        evaluated = run_stage(args, "evaluate", dataset, keep("kid_teacher.json"),
                              "--grid-file", grids[dataset][0])  # fmt: skip
        students = run_stage(args, "evaluate", dataset, keep(f"kid_{students_name(args)}.json"),
                             "--grid-file", grids[dataset][1], "--students")  # fmt: skip
        more = []
        if more_labels:
            name = "_".join(label.replace(" ", "") for label in more_labels)
            more = run_stage(args, "evaluate", dataset, keep(f"kid_teacher_{name}.json"),
                             "--grid-file", keep(f"grid_teacher_{name}.npz"),
                             "--more")["rows"]  # fmt: skip
        evaluated = dict(evaluated, rows=evaluated["rows"] + more + students["rows"])
        results[dataset] = evaluated
        report(dataset, teacher, rounds, evaluated)
    if results:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        plot(results, args.plot)
        package_first()
        grid_png(grids, args.grid)
    if not args.no_speed:
        speed = run_stage(args, "speed", "", os.path.join(args.save_dir, "speed.json"))
        book = speed["book DDIM 20 loop"]
        print(f"\nsampling speed at 64x64, the book's network, {args.speed_images} images, "
              f"precision {args.precision}:")  # fmt: skip
        for name, rate in speed.items():
            print(f"  {name:<20} {rate:8.2f} images/s  {rate / book:6.1f} x the book's loop")


if __name__ == "__main__":
    main()
