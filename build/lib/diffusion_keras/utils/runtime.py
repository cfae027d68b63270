"""What the package decides before TensorFlow is imported: its CPU kernels.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported. Left
unset, it turns its oneDNN kernels on only on x86 CPUs with AVX-512 class
features; on AVX2-only CPUs (most laptops, many cloud machines) they stay off
and convolutions run on Eigen's kernels. Measured on 2 AVX2-only AMD EPYC
cores (float32, batch 64, the book's U-Net, steady state; `bench/speed.py`):
oneDNN made our training step faster at every size (see docs/results/cpu-kernels.md, the speed
table), and the system time that Eigen's path spends on page faults fell from
a third of the CPU time to a few percent. So `import diffusion_keras` turns
oneDNN on where TensorFlow would leave it off, unless the user said otherwise.
"""

import os
import platform
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def onednn_choice(environ, tensorflow_imported, machine):
    """The value to give `TF_ENABLE_ONEDNN_OPTS`, or None to leave it alone.

    - The user set it: theirs stands (`TF_ENABLE_ONEDNN_OPTS=0` turns it off).
    - TensorFlow is already imported: too late, it has read the variable.
    - An x86-64 CPU: "1" (where TensorFlow already enables it, a no-op).
    - Anything else (ARM, where TensorFlow has its own rule): left alone.
    """
    if ONEDNN_VARIABLE in environ or tensorflow_imported:
        return None
    if machine.lower() in ("x86_64", "amd64"):
        return "1"
    return None


def configure_before_tensorflow():
    """Applies `onednn_choice` to this process; returns the value it set or None."""
    choice = onednn_choice(os.environ, "tensorflow" in sys.modules, platform.machine())
    if choice is not None:
        os.environ[ONEDNN_VARIABLE] = choice
    return choice


def onednn_enabled():
    """Whether this process's TensorFlow runs its oneDNN kernels."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - a TensorFlow build without it
        return False
    return bool(_pywrap_util_port.IsMklEnabled())
