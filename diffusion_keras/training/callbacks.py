"""Callbacks for training runs: sample grids, atomic saving, a NaN guard, memory release.

Checkpoints are `diffusion_keras.training.checkpoints`."""

import ctypes
import ctypes.util
import math
import os
import time

import keras

from diffusion_keras.utils.images import save_grid


class SampleGrid(keras.callbacks.Callback):
    """Writes `directory/epoch_NNN.png` after each epoch: `num_images` images
    from the EMA network, from the same seeded noise every epoch so that the
    grids show the model's progress. A text model's grid draws `prompts`
    (one per image, listed once in `directory/prompts.txt`)."""

    def __init__(self, directory, num_images=10, diffusion_steps=20, seed=0, columns=10,
                 prompts=None):  # fmt: skip
        super().__init__()
        self.prompts = None if prompts is None else list(prompts)
        self.directory = directory
        self.num_images = num_images
        self.diffusion_steps = diffusion_steps
        self.seed = seed
        self.columns = columns
        self.last_path = None
        # Set to `Checkpointer.epoch_is_whole` to skip epochs cut short.
        self.epoch_is_whole = None

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch_is_whole is not None and not self.epoch_is_whole(epoch):
            return
        extra = {}
        if self.prompts is not None:
            os.makedirs(self.directory, exist_ok=True)
            with open(os.path.join(self.directory, "prompts.txt"), "w") as handle:
                handle.write("\n".join(self.prompts) + "\n")
            extra = dict(prompts=self.prompts)
        images = self.model.generate(self.num_images, self.diffusion_steps, seed=self.seed, **extra)
        path = os.path.join(self.directory, f"epoch_{epoch + 1:03d}.png")
        self.last_path = save_grid(images, path, columns=self.columns)


def save_model_atomically(model, path):
    """Saves to a temporary file beside `path`, then renames it into place, so
    a crash at any moment leaves either the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".tmp_{os.path.basename(path)}")
    try:
        model.save(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        # A full disk, a quota, a read-only folder: the half-written file goes,
        # and whatever was at `path` before stays.
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers it, so that
    nothing after it saves the poisoned weights."""

    def __init__(self):
        super().__init__()
        self.failure = None

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self.failure = f"{name} became {value} at batch {batch + 1}"
                self.model.stop_training = True
                return


def release_free_memory():
    """Returns the C heap's free pages to the operating system (glibc's
    `malloc_trim`), so that memory freed after tracing a `tf.function` stops
    counting as resident. True when it ran; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


class ReleaseFreeMemory(keras.callbacks.Callback):
    """Calls `release_free_memory` after the first training batch (which
    traces the training step) and after each epoch (sample grids and
    checkpoints trace and serialise): about 50 MB less resident memory for
    the book's model on a CPU, at no cost per step."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            release_free_memory()

    def on_epoch_end(self, epoch, logs=None):
        release_free_memory()


class StepLog(keras.callbacks.Callback):
    """Appends `step,loss` to a CSV file after every training step: the step
    count so far (the model's `train_steps`, so a resumed run continues the
    numbering) and that step's training loss. A resumed run appends; the
    last row for each step is the one that counts."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self._file = None

    def on_train_begin(self, logs=None):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self._file = open(self.path, "a", buffering=1)
        if new:
            self._file.write("step,loss\n")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("step_loss")
        if loss is None:
            loss = self.model.step_loss_tracker.result()
        self._file.write(f"{int(self.model.train_steps.numpy())},{float(loss)!r}\n")

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


def duration(seconds):
    """`1h02m`, `3m05s` or `42s`."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class LineLog(keras.callbacks.Callback):
    """Progress as plain lines, for logs that go to a file: one per epoch,
    and one every `every` steps inside an epoch longer than twice that. Each
    line has the epoch and step, the epoch's losses so far, images per second
    and the time left; no progress-bar frames, no terminal codes.

    `train` uses it instead of Keras's progress bar when standard output is
    not a terminal (a file, a pipe, a batch job's log).
    """

    def __init__(self, epochs, steps_per_epoch, batch_size, every=100, stream=None,
                 clock=time.monotonic):  # fmt: skip
        super().__init__()
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.batch_size, self.every = batch_size, every
        self.stream, self.clock = stream, clock

    def on_train_begin(self, logs=None):
        self._start, self._steps, self._first = self.clock(), 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._first is None:  # the first step traces the step function
            self._first = (self.clock(), self._steps)
        long_epoch = self.steps_per_epoch > 2 * self.every
        if long_epoch and (batch + 1) % self.every == 0:
            self._line(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._line(logs)

    def _line(self, logs):
        done = int(self.model.train_steps.numpy())
        step = done - self.epoch * self.steps_per_epoch
        now = self.clock()
        since, counted = self._first or (self._start, 0)
        rate = (self._steps - counted) / (now - since) if now > since else 0.0
        losses = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items())
                           if k.endswith("loss") or k == "kid")  # fmt: skip
        left = self.epochs * self.steps_per_epoch - done
        eta = f"ETA {duration(left / rate)}" if rate > 0 else "ETA -"
        print(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch}: "
              f"{losses}, {rate * self.batch_size:.1f} images/s, {eta}", file=self.stream,
              flush=True)  # fmt: skip


class NotedInterrupt(keras.callbacks.Callback):
    """Raises `KeyboardInterrupt` at the next batch's end once a Ctrl-C was
    noted (`training.preemption.interrupts_noted`). A Ctrl-C whose
    KeyboardInterrupt lands where Python prints and ignores exceptions (a
    garbage-collector callback, such as JAX's `_xla_gc_callback`, or a
    `__del__`) would otherwise be lost, and the run would go on."""

    def __init__(self, noted):
        super().__init__()
        self.noted = noted

    def on_train_batch_end(self, batch, logs=None):
        if self.noted:
            raise KeyboardInterrupt
