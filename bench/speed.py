"""Training and sampling speed, ours against the book's way, each in its own process.

    python bench/speed.py                                  # 64x64, float32 and native
    python bench/speed.py --image-size 32 --precision float32
    python bench/speed.py --quick                          # fewer steps
    python bench/speed.py --backend tensorflow,jax,torch   # Keras backends side by side

Every path runs in a fresh Python process, because what decides much of the
speed on a CPU is fixed when TensorFlow is imported: whether its oneDNN
kernels are on. The book's way runs as a user of the book's notebook would
run it, with TensorFlow's own default (TensorFlow imported first); ours runs as
`import diffusion_keras` sets it (on, on x86 CPUs). A row with oneDNN forced
the other way shows what that choice is worth to each.

Prints images/s, the ratio to the book-style fit measured in the same run, the
convolution GFLOP/s achieved and their fraction of a matmul peak measured in
the same run, the share of CPU time spent in the kernel (system time) while
the timed steps ran, and the process's peak resident memory. Run by hand,
never by CI.

With `--backend`, each Keras backend named trains and samples ours in
processes of its own, at 32 and 64 px (`--sizes`), in float32 and the native
precision (and PyTorch also with `torch.compile`), and the rows give
images/s against TensorFlow's in the same run, and the start-up: seconds
from the process's start to `import diffusion_keras` and Keras done, and to
the first training step done (building, compiling and tracing included).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- measuring, inside a worker ---------------------------------------------


class ResidentMemory:
    """Samples this process's resident set size while a block runs."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def __enter__(self):
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_times():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def matmul_peak(dtype, size=2048, repeats=10, trials=3):
    """GFLOP/s of a square matmul, the machine's practical ceiling: the best
    of `trials`, since a busy moment would understate it."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    step = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), "float32")))
    step(a, b).numpy()
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            step(a, b).numpy()
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def conv_gflop(image_size):
    """Forward convolution GFLOP per image (2 x multiply-adds) of the book's U-Net."""
    import keras

    from diffusion_keras.nn.unet import build_unet

    total = 0
    for layer in build_unet(image_size, remat=False).layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kh, kw, channels_in, _ = layer.kernel.shape
            total += 2 * height * width * kh * kw * channels_in * channels_out
    return total / 1e9


def time_fit(model, dataset, steps, warmup, batch_size):
    """Steady-state training images/s inside one `fit` call, and the system
    share of CPU time, over the batches after `warmup` (which pay for
    tracing); fit's start-up and teardown are not counted."""
    import keras

    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (warmup - 1, warmup + steps - 1):
                marks.append((time.perf_counter(), *cpu_times()))

    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[Clock()])
    (t0, u0, s0), (t1, u1, s1) = marks
    return steps * batch_size / (t1 - t0), (s1 - s0) / max((u1 - u0) + (s1 - s0), 1e-9)


def backend_worker(args):
    """One backend's measurement in this process (`--backend` rows)."""
    import diffusion_keras  # noqa: F401, I001  first: the package's oneDNN choice
    import keras
    import numpy as np

    from diffusion_keras import DiffusionModel
    from diffusion_keras.data.flowers import flower_images

    imported = time.time() - args.started
    size, batch = args.image_size, args.batch_size
    result = {"backend": keras.backend.backend(), "imported": imported}
    images = flower_images(batch * 4, size).astype("float32") / 255.0
    model = DiffusionModel(image_size=size, seed=0, precision=args.precision)
    model.adapt(images)
    steps, warmup = (3, 2) if args.quick else (6, 2)
    with ResidentMemory() as memory:
        if args.task == "train":
            model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                          jit_compile=True if args.compiled else "auto")  # fmt: skip
            first = []

            class First(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    if not first:
                        first.append(time.time() - args.started)

            data = np.concatenate([images] * 4)  # enough batches for warm-up and timing
            marks = []

            class Clock(keras.callbacks.Callback):
                def on_train_batch_end(self, step, logs=None):
                    if step in (warmup - 1, warmup + steps - 1):
                        marks.append((time.perf_counter(), *cpu_times()))

            model.fit(data, batch_size=batch, steps_per_epoch=warmup + steps, epochs=1,
                      verbose=0, shuffle=False, callbacks=[First(), Clock()])  # fmt: skip
            (t0, u0, s0), (t1, u1, s1) = marks
            result["rate"] = steps * batch / (t1 - t0)
            result["system"] = (s1 - s0) / max((u1 - u0) + (s1 - s0), 1e-9)
            result["first_step"] = first[0]
        else:
            count = args.sample_images
            run = lambda: model.generate(count, 20, seed=0, sampler="ddim", spacing="uniform")
            run()
            start, (u0, s0) = time.perf_counter(), cpu_times()
            repeats = 1 if args.quick else 2
            for _ in range(repeats):
                run()
            u1, s1 = cpu_times()
            result["rate"] = count * repeats / (time.perf_counter() - start)
            result["system"] = (s1 - s0) / max((u1 - u0) + (s1 - s0), 1e-9)
    result["rss"] = memory.peak
    print(json.dumps(result))


def worker(args):
    """One measurement in this process; prints one JSON line."""
    if args.backend:
        return backend_worker(args)
    if args.who == "book":
        import tensorflow as tf  # first: TensorFlow's own oneDNN default
    else:
        import diffusion_keras  # noqa: F401  first: the package's choice
    import keras
    import tensorflow as tf

    from diffusion_keras.data.datasets import ImageData, train_dataset, without_autotune
    from diffusion_keras.data.flowers import flower_images
    from diffusion_keras.utils.runtime import onednn_enabled

    size, batch = args.image_size, args.batch_size
    result = {"onednn": onednn_enabled()}
    if args.task == "peak":
        result["float32"] = matmul_peak("float32")
        result["bfloat16"] = matmul_peak("bfloat16")
        result["gflop"] = conv_gflop(size)
        data = ImageData(flower_images(batch * 4, size))
        pipeline = iter(train_dataset(data, batch, repetitions=50, seed=0))
        next(pipeline)
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 2.0:
            next(pipeline)
            count += batch
        result["pipeline"] = count / (time.perf_counter() - start)
        print(json.dumps(result))
        return
    images = flower_images(batch * 4, size).astype("float32") / 255.0
    dataset = tf.data.Dataset.from_tensor_slices(images).repeat().batch(batch, drop_remainder=True)
    dataset = without_autotune(dataset)  # teardown waits are timed by the whole-run bench
    steps, warmup = (3, 2) if args.quick else (8, 2)
    if args.who == "book":
        from book_baseline import BookDiffusionModel

        model = BookDiffusionModel(image_size=size, batch_size=batch)
        model.normalizer.adapt(images)
    else:
        from diffusion_keras import DiffusionModel

        model = DiffusionModel(image_size=size, seed=0, precision=args.precision)
        model.adapt(images)
    with ResidentMemory() as memory:
        if args.task == "train":
            model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
            result["rate"], result["system"] = time_fit(model, dataset, steps, warmup, batch)
        else:
            count = args.sample_images
            noise = tf.random.normal((count, size, size, 3))
            if args.who == "book":
                run = lambda: model.generate(count, 20, noise)
            else:
                run = lambda: model.generate(count, 20, seed=0)
            run()
            start, (u0, s0) = time.perf_counter(), cpu_times()
            for _ in range(1 if args.quick else 2):
                run()
            seconds = time.perf_counter() - start
            u1, s1 = cpu_times()
            result["rate"] = count * (1 if args.quick else 2) / seconds
            result["system"] = (s1 - s0) / max((u1 - u0) + (s1 - s0), 1e-9)
    result["rss"] = memory.peak
    print(json.dumps(result))


# -- the orchestrator -----------------------------------------------------


def measure(args, who, task, precision="float32", onednn=None, sample_images=10):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    command = [
        sys.executable, __file__, "--worker", "--who", who, "--task", task,
        "--precision", precision, "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--sample-images", str(sample_images),
    ] + (["--quick"] if args.quick else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_backend(args, backend, task, size, precision, compiled=False, count=10):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DIFFUSION_KERAS_QUIET="1",
               KERAS_BACKEND=backend)  # fmt: skip
    command = [
        sys.executable, __file__, "--worker", "--backend", backend, "--task", task,
        "--precision", precision, "--image-size", str(size), "--batch-size",
        str(args.batch_size), "--sample-images", str(count), "--started", repr(time.time()),
    ] + (["--quick"] if args.quick else []) + (["--compiled"] if compiled else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_backends(args):
    """The `--backend` table: every backend, size and precision, against
    TensorFlow (or the first backend named) in the same run."""
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    precisions = [native_precision() if p == "native" else p for p in args.precision or []]
    precisions = list(dict.fromkeys(precisions or ["float32", native_precision()]))
    sizes = [int(s) for s in args.sizes.split(",")]
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; batch {args.batch_size}")
    header = (f"{'task':<7}{'size':>5}  {'backend':<18}{'precision':<16}{'images/s':>9}"
              f"{'vs ' + backends[0]:>15}{'import s':>9}{'1st step s':>11}"
              f"{'RSS MB':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for task in args.tasks.split(","):
        for size in sizes:
            for precision in precisions:
                base = None
                variants = [(b, False) for b in backends]
                if task == "train" and "torch" in backends:
                    variants.append(("torch", True))
                for backend, compiled in variants:
                    result = measure_backend(args, backend, task, size, precision, compiled)
                    base = base or result["rate"]
                    name = backend + (" (compile)" if compiled else "")
                    first = f"{result['first_step']:>11.1f}" if "first_step" in result else " " * 11
                    print(f"{task:<7}{size:>5}  {name:<18}{precision:<16}{result['rate']:>9.2f}"
                          f"{result['rate'] / base:>14.2f}x{result['imported']:>9.1f}{first}"
                          f"{result['rss'] / 1e6:>8.0f}", flush=True)  # fmt: skip
    print("sampling: 10 images, DDIM 20 steps, uniform spacing")


def native_precision():
    from diffusion_keras.utils.precision import CPU_BF16_FLAGS, _cpu_flags

    return "mixed_bfloat16" if _cpu_flags() & set(CPU_BF16_FLAGS) else "float32"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--image-size", type=int, default=64, help="16, 32, 64 or 128")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--precision",
        action="append",
        choices=["float32", "mixed_bfloat16", "native"],
        help="ours in this precision (repeatable; default float32 and native)",
    )
    parser.add_argument("--no-sampling", action="store_true", help="time training only")
    parser.add_argument("--backend", help="Keras backends to compare, e.g. tensorflow,jax,torch")
    parser.add_argument("--sizes", default="32,64", help="image sizes for --backend (32,64)")
    parser.add_argument("--tasks", default="train,sample", help="for --backend: train,sample")
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--who", choices=["book", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["peak", "train", "sample"], help=argparse.SUPPRESS)
    parser.add_argument("--sample-images", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.precision = args.precision[0] if args.precision else "float32"
        return worker(args)
    if args.backend:
        return compare_backends(args)

    precisions = [native_precision() if p == "native" else p for p in args.precision or []]
    precisions = list(dict.fromkeys(precisions or ["float32", native_precision()]))
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}")
    info = measure(args, "ours", "peak")
    peaks = {"float32": info["float32"], "mixed_bfloat16": info["bfloat16"]}
    print(
        f"matmul peak: {peaks['float32']:.0f} GFLOP/s float32, {peaks['mixed_bfloat16']:.0f} "
        f"bfloat16; U-Net forward at {args.image_size}x{args.image_size}: "
        f"{info['gflop']:.2f} GFLOP per image, training ~3x that\n"
    )
    rows = []

    def row(kind, name, who, task, precision="float32", onednn=None, count=10):
        result = measure(args, who, task, precision, onednn, count)
        flop = (3 if task == "train" else 20) * info["gflop"]
        rows.append((kind, name, result, flop * result["rate"] / peaks[precision]))
        return result

    book = row("train", "book fit, float32", "book", "train")
    row("train", "book fit, float32, oneDNN forced on", "book", "train", onednn="1")
    for precision in precisions:
        row("train", f"ours, {precision}", "ours", "train", precision)
    row("train", f"ours, {precisions[0]}, oneDNN forced off", "ours", "train", precisions[0], "0")
    samples = {}
    if not args.no_sampling:
        for count in (10, 64):
            samples[count] = row("sample", f"book loop, {count} images", "book", "sample",
                                 count=count)  # fmt: skip
            for precision in precisions:
                row("sample", f"ours, {count} images, {precision}", "ours", "sample",
                    precision, count=count)  # fmt: skip

    header = (
        f"{'path':<48}{'oneDNN':>7}{'images/s':>10}{'vs book':>9}{'of peak':>9}"
        f"{'sys CPU':>9}{'RSS MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for kind, name, result, fraction in rows:
        base = book if kind == "train" else samples[10 if "10 images" in name else 64]
        print(
            f"{kind + ': ' + name:<48}{'on' if result['onednn'] else 'off':>7}"
            f"{result['rate']:>10.2f}{result['rate'] / base['rate']:>8.2f}x{fraction:>9.0%}"
            f"{result['system']:>9.1%}{result['rss'] / 1e6:>8.0f}"
        )
    fastest = max(r[2]["rate"] for r in rows if r[0] == "train")
    print(
        f"\ninput pipeline alone: {info['pipeline']:.0f} images/s "
        f"({info['pipeline'] / fastest:.0f}x the fastest training step)"
    )
    print(f"image size {args.image_size}, batch {args.batch_size}, sampling steps 20")


if __name__ == "__main__":
    main()
