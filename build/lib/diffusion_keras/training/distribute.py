"""Training on several devices or machines with `tf.distribute`.

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
"""

import json
import os

from diffusion_keras.config.choices import STRATEGIES
from diffusion_keras.utils.errors import TrainingError, UsageError


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
    """Returns the `tf.distribute` strategy called `name`.

    Args:
        name: str. `auto` (mirrored when more than one GPU is visible, or with
            `cpu_replicas` > 1; else default), `default` (one device),
            `mirrored`, `multiworker` (cluster from `TF_CONFIG`) or `tpu`.
        cpu_replicas: int or None. Logical CPU devices to make, to try
            multi-device training on one machine.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
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


def is_multiworker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_index(strategy):
    """`None` for the chief (the process that writes the run), else the
    index of this worker."""
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
