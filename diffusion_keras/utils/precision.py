"""Numeric precision: the choices, and the rule that picks one for a device.

Mixed policies keep the weights in float32 and compute in half precision. In
this package the noise embedding, the output conv, the schedule, the loss and
the sampler's arithmetic stay in float32 whatever the policy.
"""

import contextlib
import json
import os
import time

from diffusion_keras.config.choices import PRECISIONS

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bfloat16 must beat float32 by this much on the probe to be chosen: mixed
# precision adds casts that the probe does not time.
BF16_MIN_SPEEDUP = 1.15


def validate_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}, or auto"
        )


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cache_dir():
    """Where measurements about this machine are kept: `$DIFFUSION_KERAS_CACHE`,
    else `$XDG_CACHE_HOME/diffusion_keras`, else `~/.cache/diffusion_keras`."""
    if os.environ.get("DIFFUSION_KERAS_CACHE"):
        return os.environ["DIFFUSION_KERAS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffusion_keras")


def measure_bfloat16_speedup(repeats=5):
    """float32 time over bfloat16 time of the U-Net's kind of work on this
    CPU: a 3x3 convolution, 64 to 64 channels on a batch of 16 32x32 maps,
    forward and both gradients (about 3.6 GFLOP), best of `repeats`."""
    import tensorflow as tf

    def seconds(dtype):
        rng = tf.random.Generator.from_seed(0)
        x = tf.cast(rng.normal((16, 32, 32, 64)), dtype)
        kernel = tf.cast(rng.normal((3, 3, 64, 64)) * 0.05, dtype)

        @tf.function
        def step(x, kernel):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = tf.nn.conv2d(x, kernel, 1, "SAME")
                loss = tf.reduce_sum(tf.cast(y, tf.float32))
            return tape.gradient(loss, [x, kernel])

        step(x, kernel)  # trace, and let the kernels pick their algorithms
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            [g.numpy() for g in step(x, kernel)]
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(tf.float32) / seconds(tf.bfloat16)


def cpu_bfloat16_speedup():
    """`measure_bfloat16_speedup()` for this CPU, TensorFlow version and
    oneDNN setting, measured once and then read from `cache_dir()`."""
    import tensorflow as tf

    key = "|".join([
        _cpu_model(), " ".join(sorted(_cpu_flags() & set(CPU_BF16_FLAGS))), tf.__version__,
        os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
    ])  # fmt: skip
    path = os.path.join(cache_dir(), "bfloat16_speedup.json")
    try:
        with open(path) as handle:
            known = json.load(handle)
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    speedup = measure_bfloat16_speedup()
    known[key] = speedup
    try:  # a cache that cannot be written only costs the measurement next time
        os.makedirs(cache_dir(), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump(known, handle, indent=1)
        os.replace(temporary, path)
    except OSError:
        pass
    return speedup


def _gpu_capabilities():
    """The compute capabilities `(major, minor)` of the GPUs the Keras backend
    of this process sees (an empty list for none)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        found = []
        for device in jax.devices():
            if device.platform == "gpu":
                text = str(getattr(device, "compute_capability", "0.0"))
                found.append(tuple(int(part) for part in text.split(".")[:2]))
        return found
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append(details.get("compute_capability") or (0, 0))
    return found


def auto_precision():
    """The fastest precision that keeps sample quality on this machine.

    - A GPU of compute capability 8.0 or newer (Ampere, Hopper, ...):
      `mixed_bfloat16` (tensor cores, float32's range, no loss scaling).
    - A GPU of compute capability 7.x (Volta, Turing): `mixed_float16`, with
      loss scaling.
    - No GPU, on TensorFlow, and a CPU with native bfloat16 (AVX512_BF16 or
      AMX) on which bfloat16 convolutions are measured at least 1.15x as
      fast as float32 ones (`cpu_bfloat16_speedup`; once per machine, about
      a second): `mixed_bfloat16`. Some CPUs with AVX512_BF16 run them slower
      than float32 (an Intel Xeon with AVX512_FP16 here: 0.5x).
    - No GPU on JAX or PyTorch: `float32`. On a CPU with AVX512_BF16, JAX's
      bfloat16 training was never faster than float32, PyTorch's 0.28x at
      32x32 (1.76x at 64x64) (docs/results/backends.md).
    - Anything else: `float32`.
    """
    import keras

    capabilities = _gpu_capabilities()
    if capabilities:
        capability = min(capabilities)
        if capability >= (8, 0):
            return "mixed_bfloat16"
        if capability >= (7, 0):
            return "mixed_float16"
        return "float32"
    if keras.backend.backend() != "tensorflow":
        return "float32"
    if _cpu_flags() & set(CPU_BF16_FLAGS) and cpu_bfloat16_speedup() >= BF16_MIN_SPEEDUP:
        return "mixed_bfloat16"
    return "float32"


def resolve_precision(precision):
    """`"auto"` becomes `auto_precision()`; anything else is validated."""
    if precision in (None, "auto"):
        return auto_precision()
    validate_precision(precision)
    return precision


@contextlib.contextmanager
def dtype_policy(precision):
    """Builds the layers created inside with `precision`, then restores the
    global Keras policy."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
