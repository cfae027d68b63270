"""A run's checkpoints: where they are, when they are written, which to resume.

`RUN_DIR/checkpoints/` holds two kinds, both whole models (weights, EMA,
normalizer, optimizer, step counters) written atomically:

- `epoch_003.keras`: after 3 whole epochs. The last `keep` are kept.
- `epoch_003_step_00040.keras`: after 3 whole epochs and 40 steps of the
  fourth, written every `--checkpoint-every` steps or minutes and when SIGTERM
  stops the run. Only the newest is kept, and only while it is newer than
  every epoch checkpoint. Beside it, `epoch_003_step_00040.json` holds the
  epoch's running loss means so far, so that the resumed epoch's row in
  `history.csv` is the uninterrupted one's.

The position is in the name, so `--resume` knows where in the epoch to start
without opening the file, and a resumed run sees the batches and noise an
uninterrupted run would (batches are a function of seed and epoch, noise of
seed and step count).
"""

import json
import os
import time

import keras

from diffusion_keras.config.run import DEFAULT_CHECKPOINT_EVERY as DEFAULT_EVERY
from diffusion_keras.config.types import parse_checkpoint_every
from diffusion_keras.training.callbacks import save_model_atomically
from diffusion_keras.training.checkpoint_names import (  # noqa: F401
    CHECKPOINT_PATTERN,
    checkpoint_path,
    list_checkpoints,
    running_means_path,
)
from diffusion_keras.utils.errors import TrainingError


class Checkpointer(keras.callbacks.Callback):
    """Writes the run's checkpoints (see the module's docstring).

    Args:
        directory: str. `RUN_DIR/checkpoints`.
        steps_per_epoch: int.
        keep: int. Epoch checkpoints kept.
        every: str. `--checkpoint-every`: steps, minutes (`"10m"`) or `"0"`.
        nan_guard: a `NanGuard`; nothing is written once it has fired.
        stop: a `StopSignal` or None. When it says stop, the checkpoint is
            written after the step and training stops (`preempted` is set).
        clock: a function returning seconds, for the minutes rule.
        running_means: bool. Keep the epoch's running loss means beside
            mid-epoch checkpoints. Off under a multi-worker strategy, where
            each worker holds only its share; a resumed epoch's row then
            averages the steps after the resume.
    """

    def __init__(self, directory, steps_per_epoch, keep=3, every=DEFAULT_EVERY, nan_guard=None,
                 stop=None, clock=time.monotonic, running_means=True):  # fmt: skip
        super().__init__()
        self.directory = directory
        self.steps_per_epoch = steps_per_epoch
        self.keep = keep
        self.every = parse_checkpoint_every(every)
        self.nan_guard = nan_guard
        self.stop = stop
        self.clock = clock
        self.running_means = running_means
        self.position = (0, 0)
        self._resume_at = None
        self._last_save = clock()
        self.preempted = False
        self.last_path = None

    def resume_at(self, epoch, step):
        """The next epoch to begin is `epoch`, from its step `step`."""
        self._resume_at = (epoch, step)

    def on_epoch_begin(self, epoch, logs=None):
        step = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            step = self._resume_at[1]
            if step:
                self._restore_running_means(checkpoint_path(self.directory, epoch, step))
        self.position = (epoch, step)

    def on_train_batch_end(self, batch, logs=None):
        epoch, step = self.position[0], self.position[1] + 1
        self.position = (epoch, step)
        if self._failed():
            return
        mid_epoch = step < self.steps_per_epoch
        if self.stop is not None and self.stop.should_stop():
            self.preempted = True
            self.model.stop_training = True
            if mid_epoch:  # at an epoch's end, `on_epoch_end` writes it
                self._save(epoch, step)
        elif mid_epoch and self._due(epoch * self.steps_per_epoch + step):
            self._save(epoch, step)

    def epoch_is_whole(self, epoch):
        """False at the `on_epoch_end` that Keras also calls when training
        stops inside an epoch."""
        return self.position == (epoch, self.steps_per_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if not self._failed() and self.epoch_is_whole(epoch):
            self._save(epoch + 1, 0)

    def _failed(self):
        return self.nan_guard is not None and self.nan_guard.failure is not None

    def _due(self, steps_done):
        if self.every is None:
            return False
        kind, amount = self.every
        if kind == "steps":
            return steps_done % amount == 0
        return self.clock() - self._last_save >= amount * 60.0

    def _save(self, epoch, step):
        path = checkpoint_path(self.directory, epoch, step)
        try:
            if step and self.running_means:
                self._save_running_means(path)
            save_model_atomically(self.model, path)
        except OSError as error:
            previous = self.last_path or latest_checkpoint_path(self.directory)
            kept = f"; {previous} is intact" if previous else ""
            raise TrainingError(
                f"could not write the checkpoint {path}: {error.strerror or error}{kept} "
                "(free some space, then --resume)"
            ) from None
        self._last_save = self.clock()
        self.last_path = path
        self._prune((epoch, step))

    def _prune(self, newest):
        found = list_checkpoints(self.directory)
        epoch_ends = [path for (_, step), path in found if step == 0]
        for position, path in found:
            older_mid_epoch = position[1] != 0 and position < newest
            if older_mid_epoch or path in epoch_ends[: -self.keep]:
                os.remove(path)
                if os.path.exists(running_means_path(path)):
                    os.remove(running_means_path(path))

    def _save_running_means(self, path):
        # Written before the model file, which is what marks a checkpoint.
        means = {m.name: [float(v.numpy()) for v in m.variables] for m in self.model.metrics}
        os.makedirs(self.directory, exist_ok=True)
        temporary = running_means_path(path) + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(means, handle)
        os.replace(temporary, running_means_path(path))

    def _restore_running_means(self, path):
        try:
            with open(running_means_path(path)) as handle:
                means = json.load(handle)
        except (OSError, ValueError):
            return
        for metric in self.model.metrics:
            for variable, value in zip(metric.variables, means.get(metric.name, [])):
                variable.assign(value)


def latest_checkpoint_path(directory):
    """The newest checkpoint file in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None
