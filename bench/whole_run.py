"""Whole training runs, as a user starts them: `train.py` against the book's script.

    python bench/whole_run.py                       # 64x64, 20 steps, 2 runs of each
    python bench/whole_run.py --image-size 32 --images 896 --repetitions 2 --epochs 3

Writes a folder of `--images` built-in flowers as PNG files, then runs, in
turn, `python train.py --data FOLDER ...` and `python bench/book_train.py
--data FOLDER ...` (the book's notebook as a script) with the same images,
epochs and repetitions, each a fresh process: start-up, data loading,
tracing, per-epoch samples and checkpoints, and the waits between epochs all
count. Prints each one's median wall time, user and system CPU time, the
system share, and the ratio book / ours. Then, inside one process, it times
what `train` does at the end of each epoch (sample grid, checkpoint, logs)
against the epoch's steps. Run by hand, never by CI.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_folder(folder, count, size):
    from PIL import Image

    from diffusion_keras.data.flowers import flower_images

    os.makedirs(folder, exist_ok=True)
    for index, image in enumerate(flower_images(count, size)):
        Image.fromarray(image).save(os.path.join(folder, f"{index:05d}.png"))


def timed(command):
    """`(wall, user, system)` seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def epoch_end_share(folder, args):
    """Seconds between the last step of an epoch and the first of the next,
    against an epoch's steps, for `train` with its callbacks."""
    import keras

    import diffusion_keras as dk

    marks = {"ends": [], "begins": [], "steps": []}

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            marks["begins"].append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            marks["steps"].append((len(marks["begins"]), time.perf_counter()))

    config = dk.TrainConfig(
        data=folder, image_size=args.image_size, epochs=args.epochs,
        dataset_repetitions=args.repetitions, output=tempfile.mkdtemp(), precision="float32",
    )  # fmt: skip
    dk.train(config, verbose=0, extra_callbacks=[Clock()])
    rows = []
    for epoch in range(2, args.epochs + 1):  # the first epoch traces; skip it
        times = [t for e, t in marks["steps"] if e == epoch]
        previous_last = [t for e, t in marks["steps"] if e == epoch - 1][-1]
        step = (times[-1] - times[0]) / (len(times) - 1)
        between = times[0] - previous_last - step  # the gap, less one step's own time
        rows.append((epoch, len(times) * step, between))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-book", action="store_true", help="only the epoch-end timing")
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    write_folder(folder, args.images, args.image_size)
    steps = args.images * args.repetitions // 64
    common = ["--data", folder, "--image-size", str(args.image_size), "--epochs",
              str(args.epochs), "--dataset-repetitions", str(args.repetitions)]  # fmt: skip
    commands = {
        "ours (train.py)": [sys.executable, os.path.join(ROOT, "train.py"), *common, "--output",
                            tempfile.mkdtemp(), "--verbose", "0", "--precision", "float32"],
        "book (bench/book_train.py)": [sys.executable, os.path.join(HERE, "book_train.py"),
                                       *common],
    }  # fmt: skip
    print(f"{args.images} images at {args.image_size}x{args.image_size}, {args.epochs} "
          f"epoch(s) of {steps} steps of 64, float32, {args.runs} runs of each")  # fmt: skip
    if not args.no_book:
        results = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                results[name].append(timed(command))
        print(f"{'':<28}{'wall s':>9}{'user s':>9}{'sys s':>9}{'sys share':>11}")
        walls = {}
        for name, runs in results.items():
            wall, user, system = (statistics.median(r[i] for r in runs) for i in range(3))
            walls[name] = wall
            print(f"{name:<28}{wall:>9.1f}{user:>9.1f}{system:>9.1f}"
                  f"{system / (user + system):>11.1%}")  # fmt: skip
        ours, book = walls.values()
        print(f"book / ours, median wall time: {book / ours:.2f}x")
    if args.epochs >= 2:
        print("\nepoch-end work inside train (sample grid, checkpoint, logs):")
        for epoch, stepping, between in epoch_end_share(folder, args):
            print(f"  epoch {epoch}: steps {stepping:.1f} s, between epochs {between:.2f} s "
                  f"({between / stepping:.1%} of the steps)")  # fmt: skip


if __name__ == "__main__":
    main()
