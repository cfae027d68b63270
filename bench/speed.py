"""Training and sampling speed, ours against the book's way, in one process.

    python bench/speed.py            # about 10 minutes on 2 CPU cores
    python bench/speed.py --quick    # under 3 minutes

Prints images/s for each path, its ratio to the book-style baseline measured in
the same run, the convolution GFLOP/s it achieves and their fraction of a
matmul peak measured in the same run, and the process's resident memory
(sampled while each path runs). Run by hand, never by CI.
"""

import argparse
import os
import sys
import threading
import time

os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from book_baseline import BookDiffusionModel  # noqa: E402

from diffusion_keras import DiffusionModel  # noqa: E402
from diffusion_keras.data import ImageData, train_dataset  # noqa: E402
from diffusion_keras.flowers import flower_images  # noqa: E402


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


def matmul_peak(dtype, size=2048, repeats=10, trials=3):
    """GFLOP/s of a square matmul, the machine's practical ceiling: the best
    of `trials`, since a busy moment would understate it."""
    a = tf.random.normal((size, size), dtype="float32")
    a = tf.cast(a, dtype)
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


def conv_gflop(network):
    """Forward convolution GFLOP per image (2 x multiply-adds)."""
    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kh, kw, channels_in, _ = layer.kernel.shape
            total += 2 * height * width * kh * kw * channels_in * channels_out
    return total / 1e9


class BatchClock(keras.callbacks.Callback):
    """Records when each training batch ends."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def time_fit(model, dataset, steps, warmup, batch_size):
    """Steady-state training images/s inside one `fit` call: the batches after
    `warmup` (which pay for tracing), so fit's start-up is not counted."""
    clock = BatchClock()
    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
    return steps * batch_size / (clock.ends[-1] - clock.ends[warmup - 1])


def time_call(function, count, repeats=1):
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return count * repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps: under 3 minutes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--jit", action="store_true", help="also time jit_compile=True")
    args = parser.parse_args()
    batch = args.batch_size
    steps, warmup = (4, 2) if args.quick else (12, 2)
    diffusion_steps = 20

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    print(
        f"matmul peak: {peaks['float32']:.0f} GFLOP/s float32, "
        f"{peaks['bfloat16']:.0f} GFLOP/s bfloat16"
    )
    data = ImageData(flower_images(batch * 4, 64))
    images = data.images.astype("float32") / 255.0
    dataset = tf.data.Dataset.from_tensor_slices(images).repeat().batch(batch, drop_remainder=True)
    # The book's separate layers, to count the convolutions (remat changes none).
    forward = conv_gflop(DiffusionModel(seed=0, remat=False).network)
    print(f"U-Net forward: {forward:.2f} GFLOP per image; training ~3x that\n")

    rows = []

    def record(kind, name, rate, flop_per_image, peak_kind, memory, baseline=None):
        gflops = rate * flop_per_image
        rows.append((kind, name, rate, baseline, gflops, gflops / peaks[peak_kind], memory))

    # -- training -----------------------------------------------------------
    book = BookDiffusionModel(batch_size=batch)
    book.normalizer.adapt(images)
    book.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    with ResidentMemory() as memory:
        book_rate = time_fit(book, dataset, steps, warmup, batch)
    record("train", "book fit (float32)", book_rate, 3 * forward, "float32", memory.peak)
    # (precision, jit_compile, remat); remat (the default) trades a little
    # time for memory, so the last row shows it off.
    variants = [("float32", False, True), ("mixed_bfloat16", False, True)]
    if args.jit:
        variants.append(("float32", True, True))
    variants.append(("mixed_bfloat16", False, False))
    for precision, jit, remat in variants:
        model = DiffusionModel(seed=0, precision=precision, remat=remat)
        model.adapt(images)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4), jit_compile=jit)
        with ResidentMemory() as memory:
            rate = time_fit(model, dataset, steps, warmup, batch)
        name = f"ours fit ({precision}{', jit' if jit else ''}{'' if remat else ', no remat'})"
        peak = "bfloat16" if "bfloat16" in precision else "float32"
        record("train", name, rate, 3 * forward, peak, memory.peak, book_rate)

    # -- the EMA update alone (the last model trained) -------------------------
    update_ema = tf.function(model.update_ema)
    update_ema()
    start = time.perf_counter()
    for _ in range(20):
        update_ema()
    ema_seconds = (time.perf_counter() - start) / 20

    # -- input pipeline -------------------------------------------------------
    pipeline = train_dataset(data, batch, repetitions=50, seed=0)
    iterator = iter(pipeline)
    next(iterator)
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < 2.0:
        next(iterator)
        count += batch
    pipeline_rate = count / (time.perf_counter() - start)

    # -- sampling -------------------------------------------------------------
    ours = {p: DiffusionModel(seed=0, precision=p) for p in ("float32", "mixed_bfloat16")}
    for model in ours.values():
        model.adapt(images)
    for count in (10, 64):
        noise = tf.random.normal((count, 64, 64, 3))
        flop = diffusion_steps * forward
        with ResidentMemory() as memory:
            base = time_call(lambda n=noise, c=count: book.generate(c, diffusion_steps, n), count)
        record("sample", f"book loop, {count} images", base, flop, "float32", memory.peak)
        for precision, model in ours.items():
            with ResidentMemory() as memory:
                rate = time_call(
                    lambda m=model, n=count: m.generate(n, diffusion_steps, seed=0), count
                )
            peak = "bfloat16" if "bfloat16" in precision else "float32"
            name = f"ours, {count} images ({precision})"
            record("sample", name, rate, flop, peak, memory.peak, base)

    header = f"{'path':<46}{'images/s':>10}{'vs book':>9}{'GFLOP/s':>9}{'of peak':>9}{'RSS MB':>8}"
    print(header)
    print("-" * len(header))
    for kind, name, rate, baseline, gflops, fraction, memory in rows:
        ratio = f"{rate / baseline:.2f}x" if baseline else "1.00x"
        print(
            f"{kind + ': ' + name:<46}{rate:>10.2f}{ratio:>9}{gflops:>9.0f}"
            f"{fraction:>8.0%}{memory / 1e6:>8.0f}"
        )
    train_rate = max(r[2] for r in rows if r[0] == "train")
    print(
        f"\ninput pipeline alone: {pipeline_rate:.0f} images/s "
        f"({pipeline_rate / train_rate:.0f}x the fastest training step)"
    )
    step_seconds = batch / train_rate
    print(
        f"EMA update alone: {ema_seconds * 1e3:.1f} ms per step "
        f"({ema_seconds / step_seconds:.1%} of the fastest training step)"
    )
    print(f"diffusion steps {diffusion_steps}, batch {batch}, timed steps {steps}")


if __name__ == "__main__":
    main()
