"""The names of a run's checkpoints, which carry their position (no TensorFlow).

`diffusion_keras.training.checkpoints` writes and prunes them.
"""

import glob
import os
import re

CHECKPOINT_PATTERN = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.keras$")


def checkpoint_path(directory, epoch, step=0):
    """The checkpoint after `epoch` whole epochs and `step` more steps."""
    name = f"epoch_{epoch:03d}.keras" if step == 0 else f"epoch_{epoch:03d}_step_{step:05d}.keras"
    return os.path.join(directory, name)


def list_checkpoints(directory):
    """`((epoch, step), path)` of every checkpoint in `directory`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "epoch_*.keras")):
        match = CHECKPOINT_PATTERN.search(os.path.basename(path))
        if match:
            found.append(((int(match.group(1)), int(match.group(2) or 0)), path))
    return sorted(found)


def running_means_path(checkpoint):
    return checkpoint[: -len(".keras")] + ".json"
