"""Numeric precision: the choices, and the rule that picks one for a device.

Mixed policies keep the weights in float32 and compute in half precision. In
this package the noise embedding, the output conv, the schedule, the loss and
the sampler's arithmetic stay in float32 whatever the policy.
"""

import contextlib

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def validate_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)} or auto"
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


def auto_precision():
    """The fastest precision that keeps sample quality on this machine.

    - A GPU of compute capability 8.0 or newer (Ampere, Hopper, ...):
      `mixed_bfloat16` (tensor cores, float32's range, no loss scaling).
    - A GPU of compute capability 7.x (Volta, Turing): `mixed_float16`, with
      loss scaling.
    - No GPU, and a CPU with native bfloat16 (AVX512_BF16 or AMX):
      `mixed_bfloat16`.
    - Anything else: `float32`.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            capabilities.append(details.get("compute_capability") or (0, 0))
        capability = min(capabilities)
        if capability >= (8, 0):
            return "mixed_bfloat16"
        if capability >= (7, 0):
            return "mixed_float16"
        return "float32"
    if _cpu_flags() & set(CPU_BF16_FLAGS):
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
