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

from diffusion_keras.errors import UsageError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


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
                "variable (see the README)"
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
    callbacks=(), verbose=1,
):  # fmt: skip
    """`model.fit` for `MultiWorkerMirroredStrategy`, with Keras callbacks."""
    import keras
    import tensorflow as tf

    dataset = distributed_batches(strategy, make_dataset, global_batch_size)
    iterator = iter(dataset)

    @tf.function
    def train_step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

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
    logs = {}
    for epoch in range(initial_epoch, epochs):
        for metric in model.metrics:
            metric.reset_state()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            logs = {k: float(v) for k, v in train_step(iterator).items()}
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        callback_list.on_epoch_end(epoch, dict(logs))
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history
