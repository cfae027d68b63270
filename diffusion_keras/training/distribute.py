"""Training on several devices or machines, with each backend's own engine.

On TensorFlow, with `tf.distribute`:

- `mirrored`: every GPU of one machine (or `cpu_replicas` logical CPUs), with
  Keras's `fit`.
- `multiworker`: several machines (or processes) described by `TF_CONFIG`.
  Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy`
  (keras-team/keras#20585), so `fit_multiworker` drives `train_step` with
  `strategy.run` and the usual Keras callbacks.

The global batch is what the user asks for and is split across replicas. The
model makes a step on N replicas equal a step on one device: the loss is divided
by N before gradients are summed, each replica draws its own slice of the global
batch's noise, and batch norm is synchronised.

On JAX, with Keras's distribution API (`keras.distribution.DataParallel`),
which `fit` supports: `mirrored` (and `auto` with several devices) shards
every batch over all local devices (GPUs, TPU cores, or `cpu_replicas`
host devices); `multiworker` first joins the processes of a cluster with
`keras.distribution.initialize` (JAX's coordinator is the first of
`KERAS_DISTRIBUTION_JOB_ADDRESSES`; `KERAS_DISTRIBUTION_NUM_PROCESSES` and
`KERAS_DISTRIBUTION_PROCESS_ID` say how many and which), then shards over every device of every
process; `tpu` is `mirrored` over the TPU cores. The step sees the global
batch as one sharded array, so it is one device's step without dividing
anything. Batch norm's statistics are over the global batch too.

On PyTorch, one device: Keras's `fit` has no data-parallel engine for it
(DistributedDataParallel wraps a `torch.nn.Module`'s forward, not Keras's
`train_step`), so anything else fails in one line naming the backends that do.
"""

import contextlib
import json
import os

from diffusion_keras.config.choices import STRATEGIES
from diffusion_keras.utils.errors import TrainingError, UsageError


def _backend():
    # Imported when asked: the command-line tools import this module before
    # Keras loads.
    from diffusion_keras.utils import backend

    return backend.name()


class KerasDistribution:
    """What `train` needs of a strategy, for the JAX and PyTorch backends:
    `scope()` and `num_replicas_in_sync`. Under JAX the distribution (a
    `keras.distribution.DataParallel`, or None for one device) is set for
    the whole process, so `fit` shards its batches too."""

    def __init__(self, distribution=None, replicas=1, process_index=0):
        self.distribution = distribution
        self.num_replicas_in_sync = int(replicas)
        self.process_index = int(process_index)
        if distribution is not None:
            import keras

            keras.distribution.set_distribution(distribution)

    def scope(self):
        return contextlib.nullcontext()


def _host_device_count(count):
    # JAX reads XLA_FLAGS when it starts its CPU backend, at the first use
    # of a device: before anything is built.
    flag = f"--xla_force_host_platform_device_count={int(count)}"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [flag])


def _jax_distribution(name, cpu_replicas):
    import keras

    if cpu_replicas and cpu_replicas > 1:
        _host_device_count(cpu_replicas)
    process_index = 0
    if name == "multiworker":
        needed = ["KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                  "KERAS_DISTRIBUTION_PROCESS_ID"]  # fmt: skip
        if any(not os.environ.get(name) for name in needed):
            raise UsageError(
                f"--strategy multiworker on JAX needs {', '.join(needed)} "
                "(see docs/guides/backends.md)"
            )
        keras.distribution.initialize()
        process_index = int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", 0))
    devices = keras.distribution.list_devices()
    if name == "tpu" and not any(d.lower().startswith("tpu") for d in devices):
        raise UsageError("--strategy tpu: no TPU found by JAX")
    many = len(devices) > 1
    if name == "default" or (name == "auto" and not many):
        return KerasDistribution()
    return KerasDistribution(
        keras.distribution.DataParallel(devices=devices), len(devices), process_index
    )


def _torch_distribution(name, cpu_replicas):
    if name not in ("auto", "default") or (cpu_replicas or 1) > 1:
        what = f"--strategy {name}" if name not in ("auto", "default") else "--cpu-replicas"
        raise UsageError(
            f"{what}: the PyTorch backend trains on one device (Keras has no data-parallel "
            "fit for it); use KERAS_BACKEND=jax or tensorflow for several"
        )
    return KerasDistribution()


def configure_cpu_replicas(count):
    """Splits the CPU into `count` logical devices (before TensorFlow starts)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        raise UsageError(
            "--cpu-replicas must be set before TensorFlow has started its devices"
        ) from None


def make_strategy(name="auto", cpu_replicas=None):
    """Returns the strategy called `name`: a `tf.distribute` strategy on
    TensorFlow, a `KerasDistribution` on JAX and PyTorch.

    Args:
        name: str. `auto` (mirrored when more than one GPU is visible, or with
            `cpu_replicas` > 1; else default), `default` (one device),
            `mirrored`, `multiworker` (cluster from `TF_CONFIG`) or `tpu`.
        cpu_replicas: int or None. Logical CPU devices to make, to try
            multi-device training on one machine.
    """
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if _backend() == "jax":
        return _jax_distribution(name, cpu_replicas)
    if _backend() == "torch":
        return _torch_distribution(name, cpu_replicas)
    import tensorflow as tf
    if cpu_replicas and cpu_replicas > 1:
        configure_cpu_replicas(cpu_replicas)
    # Physical devices only: listing logical ones starts the runtime, after which
    # a multi-worker strategy can no longer configure its collective ops.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        many = len(gpus) > 1 or (cpu_replicas or 1) > 1
        name = "mirrored" if many else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError(
                "--strategy multiworker needs the cluster in the TF_CONFIG environment "
                "variable (see docs/guides/distributed.md)"
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise UsageError(f"TF_CONFIG is not valid JSON: {error}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError) as error:
        raise UsageError(f"--strategy tpu: no TPU found ({error})") from None
    return tf.distribute.TPUStrategy(resolver)


def default_strategy():
    """One device: TensorFlow's default strategy, or a `KerasDistribution`."""
    if _backend() != "tensorflow":
        return KerasDistribution()
    import tensorflow as tf

    return tf.distribute.get_strategy()


def is_multiworker(strategy):
    """Whether `strategy` is TensorFlow's multi-worker strategy (trained by
    `fit_multiworker`; JAX's processes train with `fit`)."""
    if isinstance(strategy, KerasDistribution):
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_index(strategy):
    """`None` for the chief (the process that writes the run), else the
    index of this worker."""
    if isinstance(strategy, KerasDistribution):
        return None if strategy.process_index == 0 else strategy.process_index
    if not is_multiworker(strategy):
        return None
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    cluster = resolver.cluster_spec().as_dict()
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster):
        return None
    return task_id if task_type == "worker" else f"{task_type}_{task_id}"


def distributed_batches(strategy, make_dataset, global_batch_size):
    """Each input pipeline (one per worker) takes its slice of every global
    batch, so the replicas together see exactly the single-device batches."""

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch_size)
        if context.num_replicas_in_sync != context.num_input_pipelines:
            raise UsageError("--strategy multiworker supports one replica per worker")
        start = context.input_pipeline_id * per_replica

        def take_slice(*element):
            # Images, or (images, labels) for a conditional model.
            sliced = [part[start : start + per_replica] for part in element]
            return sliced[0] if len(sliced) == 1 else tuple(sliced)

        return make_dataset().map(take_slice)

    return strategy.distribute_datasets_from_function(dataset_fn)


def fit_multiworker(
    model, strategy, make_dataset, global_batch_size, epochs, initial_epoch, steps_per_epoch,
    callbacks=(), verbose=1, first_step=0, stop=None,
):  # fmt: skip
    """`model.fit` for `MultiWorkerMirroredStrategy`, with Keras callbacks.

    The first epoch starts at its batch `first_step` (a resumed epoch). Each
    step all-reduces the workers' `stop` flags (a `StopSignal`) into
    `stop.agreed`, so every worker sees the same answer after the same step.
    A worker that stops answering (killed, its machine gone) makes the next
    collective fail (8-12 s after a SIGKILL in the tests; the strategy's
    health check, every 30 s, is the backstop), and this raises
    `TrainingError` in one line instead of hanging.
    """
    import keras
    import tensorflow as tf


    dataset = distributed_batches(strategy, make_dataset, global_batch_size)
    iterator = iter(dataset)
    if stop is not None:
        stop.reinstall()

    def replica_step(data, stop_flag):
        logs = model.train_step(data)
        logs["step_loss"] = model.step_loss_tracker.result()
        # Summed over the workers: > 0 when any of them was asked to stop.
        context = tf.distribute.get_replica_context()
        logs["stop"] = context.all_reduce(tf.distribute.ReduceOp.SUM, stop_flag * 1.0)
        return logs

    @tf.function
    def train_step(iterator, stop_flag):
        logs = strategy.run(replica_step, args=(next(iterator), stop_flag))
        stop = strategy.experimental_local_results(logs.pop("stop"))[0]
        logs = {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}
        return dict(logs, stop=stop)

    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    logs, position = {}, (initial_epoch, first_step)
    lost = (tf.errors.UnavailableError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError, tf.errors.InternalError)  # fmt: skip
    try:
        for epoch in range(initial_epoch, epochs):
            # Resetting and reading the metrics are collectives too.
            for metric in model.metrics:
                metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            for step in range(first_step if epoch == initial_epoch else 0, steps_per_epoch):
                position = (epoch, step)
                callback_list.on_train_batch_begin(step)
                flag = tf.constant(1.0 if stop is not None and stop.requested else 0.0)
                logs = {k: float(v) for k, v in train_step(iterator, flag).items()}
                agreed = logs.pop("stop") > 0
                if stop is not None:
                    stop.agreed = agreed
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            epoch_logs = {k: v for k, v in logs.items() if k != "step_loss"}
            callback_list.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
    except lost as error:
        raise TrainingError(
            f"lost contact with another worker at epoch {position[0] + 1}, step "
            f"{position[1] + 1} ({type(error).__name__}); --resume of the whole job continues "
            "from the last checkpoint"
        ) from None
    callback_list.on_train_end(logs)
    return model.history
