"""A run directory's safety: one writer, no silent overwrite, one log row per step.

- `existing_run` says whether a folder already holds a run, and `refuse_existing`
  stops a new run there with one line (unless `--resume`, or `--overwrite`,
  which `move_aside` turns into a rename to `<dir>.old-<time>`: never a delete).
- `RunLock` is `RUN_DIR/.lock`, holding the writer's process id and host: a second
  writer refuses with one line naming the first; a lock whose process is gone
  (SIGKILL, a reboot) is taken over with a warning.
- `trim_logs` cuts `history.csv`, `steps.csv` and the TensorBoard scalars back to
  the checkpoint a run resumes from, so that what a stopped and resumed run logs
  is, row for row, what an uninterrupted run logs.
"""

import csv
import glob
import io
import json
import os
import socket
import time
import warnings

from diffusion_keras.config.run import run_paths
from diffusion_keras.training.checkpoint_names import list_checkpoints
from diffusion_keras.utils.errors import TrainingError

LOCK_NAME = ".lock"


def existing_run(run_dir):
    """A description of the run in `run_dir` (its newest checkpoint and step),
    or None when the folder holds no trained weights to lose (missing, empty,
    stopped before its first checkpoint, or only files a restarted run reuses,
    such as an autoencoder trained first)."""
    paths = run_paths(run_dir)
    checkpoints = list_checkpoints(paths["checkpoints"])
    if checkpoints:
        (epoch, step), path = checkpoints[-1]
        return f"newest checkpoint {path}: {epoch} epochs" + (f" and {step} steps" if step else "")
    if os.path.exists(paths["model"]):
        return f"its model {paths['model']}"
    return None


def refuse_existing(run_dir, kind="run", holds=existing_run):
    """Raises `TrainingError` in one line when `run_dir` holds a run (or what
    `holds(run_dir)` describes: a `kind`, such as a distillation)."""
    where = holds(run_dir)
    if where is not None:
        raise TrainingError(
            f"{run_dir} already holds a {kind} ({where}); --resume continues it, another "
            "--output starts a new one, or --overwrite moves it aside to "
            f"{run_dir}.old-<time>"
        )


def move_aside(run_dir, clock=time.time):
    """Renames a run directory to `<run_dir>.old-<YYYYmmdd-HHMMSS>` (never deletes);
    returns the new name, or None when there was nothing to move."""
    if not os.path.exists(run_dir):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    target = f"{run_dir.rstrip(os.sep)}.old-{stamp}"
    suffix = 1
    while os.path.exists(target):
        target = f"{run_dir.rstrip(os.sep)}.old-{stamp}-{suffix}"
        suffix += 1
    os.rename(run_dir, target)
    return target


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(run_dir):
    """`{"pid", "host", "started"}` of a live writer of `run_dir`, or None
    (no lock, or a stale one)."""
    try:
        with open(os.path.join(run_dir, LOCK_NAME)) as handle:
            holder = json.load(handle)
    except (OSError, ValueError):
        return None
    if holder.get("host") != socket.gethostname():
        return holder  # another machine's: cannot tell, so it holds
    if holder.get("pid") == os.getpid() or not _alive(int(holder.get("pid", 0))):
        return None
    return holder


def held_elsewhere(run_dir, holder):
    """The one-line error for a run directory that `holder` is writing."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return TrainingError(
        f"{run_dir} is being written by another run (process {holder.get('pid')} on "
        f"{holder.get('host')}, since {started}); wait for it, or stop it"
    )


class RunLock:
    """`RUN_DIR/.lock`: the one process that writes a run directory.

    A context manager: entering takes the lock (or raises `TrainingError` in
    one line naming the live holder), leaving removes it. A lock left by a
    process that no longer exists on this host is taken over with a warning.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def __enter__(self):
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as error:
            raise TrainingError(
                f"cannot write to the run directory {self.run_dir!r}: {error.strerror or error}"
            ) from None
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        )
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except PermissionError as error:
                raise TrainingError(
                    f"cannot write to the run directory {self.run_dir!r}: {error.strerror}"
                ) from None
            except FileExistsError:
                holder = lock_holder(self.run_dir)
                if holder is not None:
                    raise held_elsewhere(self.run_dir, holder) from None
                warnings.warn(f"taking over the stale lock of {self.run_dir}", stacklevel=2)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            self.held = True
            return self
        raise TrainingError(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False
        return False


def _rewrite(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _trim_csv(path, keep):
    """Keeps the header and the rows for which `keep(row)` holds."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = []
    for row in body:
        try:
            if row and keep(dict(zip(header, row))):
                kept.append(row)
        except (KeyError, ValueError):
            continue  # a row cut off by a crash
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header] + kept)
    _rewrite(path, out.getvalue())


def _trim_events(path, epoch, global_step):
    """Drops the scalars of a TensorBoard event file logged at or after the
    resumed position: epoch scalars (`epoch_*`, step = the epoch index) from
    `epoch` on, any other at steps above `global_step`."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    records = []
    try:
        for record in tf.data.TFRecordDataset(path):
            records.append(record.numpy())
    except tf.errors.DataLossError:
        pass  # the end of a file cut off by a crash
    kept, dropped = [], 0
    for record in records:
        event = event_pb2.Event.FromString(record)
        if event.HasField("summary") and event.summary.value:
            stale = any(
                event.step >= epoch if value.tag.startswith("epoch_") else event.step > global_step
                for value in event.summary.value
            )
            if stale:
                dropped += 1
                continue
        kept.append(record)
    if not dropped:
        return
    temporary = path + ".tmp"
    with tf.io.TFRecordWriter(temporary) as writer:
        for record in kept:
            writer.write(record)
    os.replace(temporary, path)


def trim_logs(run_dir, epoch, global_step):
    """Cuts a run's logs back to a resumed position: `epoch` whole epochs
    and `global_step` training steps done."""
    paths = run_paths(run_dir)
    _trim_csv(paths["history"], lambda row: int(row["epoch"]) < epoch)
    _trim_csv(paths["steps"], lambda row: int(row["step"]) <= global_step)
    for events in glob.glob(os.path.join(paths["logs"], "**", "events.out.tfevents.*"),
                            recursive=True):  # fmt: skip
        _trim_events(events, epoch, global_step)


def claim_run_directory(output, resume, overwrite, kind="run", holds=existing_run,
                        resume_from=None):  # fmt: skip
    """Refuses a run directory another process is writing, and one that holds
    a run unless resuming it or told to move it aside (`--overwrite`).

    A distillation directory is claimed the same way: `kind` names what the
    directory holds in messages, `holds(output)` describes it (or None), and
    `resume_from` is the file a resumed one must have.
    """
    if resume and overwrite:
        raise TrainingError(f"--overwrite starts a new {kind}; it does not go with --resume")
    holder = lock_holder(output)
    if holder is not None:
        raise held_elsewhere(output, holder)
    if resume:
        if resume_from is not None and not os.path.exists(resume_from):
            raise TrainingError(
                f"--resume: {output} holds no {kind} (no {os.path.basename(resume_from)})"
            )
        return
    if overwrite and holds(output) is not None:
        moved = move_aside(output)
        print(f"moved the {kind} in {output} aside to {moved}")
    else:
        refuse_existing(output, kind, holds)
