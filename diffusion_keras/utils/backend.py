"""The Keras backend this process runs on, and the few things each does its own way.

Everything else in the package is written once, in `keras.ops`, and runs on
TensorFlow, JAX and PyTorch alike. What differs, and is kept here:

- **gradients** (`train_step`): TensorFlow records a `GradientTape`, PyTorch
  calls `backward`, JAX differentiates a pure function of the variables'
  values. `train_step` hands each backend the same two halves: `forward`
  (the loss, reading the model's variables) and `finish` (the optimizer has
  stepped: the EMA, counters and metrics, by assigning variables). Under JAX
  both run inside a `keras.StatelessScope` that maps every variable to the
  traced value of the step's state, so the same code is a pure function, as
  Keras's JAX `fit` requires (keras.io, "Customizing what happens in fit()
  with JAX").
- **seeded draws during training** (`stateless_normal`, `stateless_uniform`):
  each backend's own counter-based generator, keyed by (seed, step). Training
  noise need not be the same across backends; sampling noise must, and is
  drawn with numpy on the host (`diffusion_keras.sampling.steps`).
- **compiling a loop** (`compile_loop`): `tf.function`, `jax.jit` over the
  variables' values, or PyTorch run eagerly under `no_grad`.
- **gradients with respect to inputs** (`input_gradients`: classifier
  guidance).

A feature that stays TensorFlow-only calls `require_tensorflow`, which fails in
one line naming the backend that does support it.
"""

import keras

from diffusion_keras.utils.errors import DiffusionKerasError

BACKENDS = ("tensorflow", "jax", "torch")


class BackendError(DiffusionKerasError):
    """A feature asked for on a backend that does not have it."""


def name():
    """The Keras backend of this process: `"tensorflow"`, `"jax"` or `"torch"`."""
    return keras.backend.backend()


def require_tensorflow(feature):
    """Raises `BackendError` in one line unless this process runs on TensorFlow."""
    if name() != "tensorflow":
        raise BackendError(
            f"{feature} runs on the TensorFlow backend only: run it with "
            f"KERAS_BACKEND=tensorflow (this process runs on {name()})"
        )


def counter_dtype():
    """The dtype of step counters: int64, or int32 under JAX, whose arrays
    are 32-bit unless x64 is on (2**31 steps is still years of training;
    files move between backends either way)."""
    return "int32" if name() == "jax" else "int64"


# -- seeded draws inside a training step ------------------------------------


def step_seed(seed, stream, counter):
    """The stateless seed of draw stream `stream` at step `counter` (a
    variable or tensor) of a model seeded with `seed`. TensorFlow keeps the
    int64 pair its runs have always used; JAX and PyTorch take 32-bit keys."""
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.stack([tf.constant(int(seed), "int64") * 4 + stream, tf.cast(counter, "int64")])
    key = (int(seed) * 4 + int(stream)) % (1 << 31)
    return keras.ops.stack(
        [keras.ops.convert_to_tensor(key, "int32"), keras.ops.cast(counter, "int32")]
    )


def substream(seed, index):
    """Stateless seed `index` of the stream `seed` (`step_seed`)."""
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.stack([seed[0], seed[1] + index * (1 << 40)])
    # 32-bit keys: a distinct first word per substream.
    return keras.ops.stack([seed[0] + index * 1_000_003, seed[1]])


def _torch_device():
    # Where Keras puts PyTorch tensors (a GPU when there is one).
    return keras.ops.zeros(()).device


def _torch_generator(seed):
    import torch

    first, second = (int(v) for v in keras.ops.convert_to_numpy(seed))
    generator = torch.Generator(device=_torch_device())
    generator.manual_seed((first * 6_364_136_223_846_793_005 + second) % (1 << 63))
    return generator


# Each backend's stateless draw of each kind: TensorFlow's, JAX's, PyTorch's.
_DRAWS = {
    "normal": ("stateless_normal", "normal", "randn"),
    "uniform": ("stateless_uniform", "uniform", "rand"),
}


def _stateless_draw(kind, shape, seed):
    tf_draw, jax_draw, torch_draw = _DRAWS[kind]
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return getattr(tf.random, tf_draw)(shape, seed)
    shape = tuple(int(s) for s in shape)
    if backend == "jax":
        import jax

        return getattr(jax.random, jax_draw)(keras.ops.cast(seed, "uint32"), shape, "float32")
    import torch

    return getattr(torch, torch_draw)(shape, generator=_torch_generator(seed),
                                      device=_torch_device())  # fmt: skip


def stateless_normal(shape, seed):
    """Standard normal float32 noise of `shape`, a function of `seed` alone."""
    return _stateless_draw("normal", shape, seed)


def stateless_uniform(shape, seed):
    """Uniform float32 draws in [0, 1) of `shape`, a function of `seed` alone."""
    return _stateless_draw("uniform", shape, seed)


# -- training steps ----------------------------------------------------------


def _collect(scope, variables, old_values):
    values = []
    for variable, old in zip(variables, old_values):
        value = scope.get_current_value(variable)
        values.append(old if value is None else value)
    return values


def train_step(model, args, forward, finish, weights=None):
    """One optimizer step of `model` on any backend.

    Args:
        model: a compiled `keras.Model`.
        args: what Keras passed to `train_step`: `(data,)`, or under JAX
            `(state, data)`.
        forward: `forward(data) -> (loss, aux)`; reads variables, may assign
            non-trainable ones (batch-norm statistics).
        finish: `finish(data, loss, aux) -> logs`, after the optimizer step:
            the EMA, counters and metrics.
        weights: the variables to train; `model.trainable_variables` if None.
            Under JAX always `model.trainable_variables` (the state Keras
            hands the step), so a subset must be the model's trainable ones.

    Returns:
        The logs; under JAX `(logs, state)`.
    """
    backend = name()
    optimizer = model.optimizer
    if backend == "jax":
        return _jax_train_step(model, *args, forward, finish)
    (data,) = args
    weights = list(model.trainable_variables if weights is None else weights)
    if backend == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, aux = forward(data)
            # The optimizer sums gradients over replicas: each replica's loss
            # is divided by their number, so N replicas with global batch B
            # take one device's step with batch B. `scale_loss` applies loss
            # scaling under mixed_float16.
            scaled_loss = optimizer.scale_loss(loss / replicas)
        optimizer.apply(tape.gradient(scaled_loss, weights), weights)
        return finish(data, loss, aux)
    import torch

    loss, aux = forward(data)
    values = [weight.value for weight in weights]
    gradients = torch.autograd.grad(optimizer.scale_loss(loss), values, allow_unused=True)
    gradients = [torch.zeros_like(v) if g is None else g for v, g in zip(values, gradients)]
    with torch.no_grad():
        optimizer.apply(gradients, weights)
        return finish(data, loss.detach(), _detached(aux))


def _detached(tree):
    return keras.tree.map_structure(
        lambda x: x.detach() if hasattr(x, "detach") else x, tree
    )


def _jax_train_step(model, state, data, forward, finish):
    import jax

    trainable, non_trainable, optimizer_values, metric_values = state
    trainable_variables = model.trainable_variables
    non_trainable_variables = model.non_trainable_variables
    optimizer_variables = model.optimizer.variables
    metric_variables = model.metrics_variables

    def loss_function(trainable, non_trainable):
        mapping = [
            *zip(trainable_variables, trainable),
            *zip(non_trainable_variables, non_trainable),
            *zip(optimizer_variables, optimizer_values),
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss, aux = forward(data)
            scaled_loss = model.optimizer.scale_loss(loss)
        return scaled_loss, (loss, aux, _collect(scope, non_trainable_variables, non_trainable))

    gradients, (loss, aux, non_trainable) = jax.grad(loss_function, has_aux=True)(
        trainable, non_trainable
    )
    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, gradients, trainable
    )
    mapping = [
        *zip(trainable_variables, trainable),
        *zip(non_trainable_variables, non_trainable),
        *zip(optimizer_variables, optimizer_values),
        *zip(metric_variables, metric_values),
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = finish(data, loss, aux)
    non_trainable = _collect(scope, non_trainable_variables, non_trainable)
    metric_values = _collect(scope, metric_variables, metric_values)
    return logs, (trainable, non_trainable, optimizer_values, metric_values)


def test_step(model, args, evaluate):
    """One evaluation step on any backend: `evaluate(data) -> logs` reads
    and assigns variables (counters, metrics). Under JAX `args` is `(state,
    data)` and the result `(logs, state)`."""
    if name() != "jax":
        (data,) = args
        if name() == "torch":
            import torch

            with torch.no_grad():
                return evaluate(data)
        return evaluate(data)
    state, data = args
    trainable, non_trainable, metric_values = state
    variables = [model.trainable_variables, model.non_trainable_variables, model.metrics_variables]
    values = [trainable, non_trainable, metric_values]
    mapping = [pair for vs, xs in zip(variables, values) for pair in zip(vs, xs)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = evaluate(data)
    return logs, tuple(_collect(scope, vs, xs) for vs, xs in zip(variables, values))


# -- compiled functions and input gradients ---------------------------------


def compile_loop(function, variables, input_signature=None):
    """`function` compiled for this backend.

    - TensorFlow: `tf.function` with `input_signature` (no retracing for
      other batch sizes or settings), without AutoGraph.
    - JAX: `jax.jit` of a pure function of the variables' current values and
      the arguments (Keras variables read inside it see the traced values),
      so later training is seen without retracing.
    - PyTorch: run eagerly under `torch.no_grad()`.

    `variables` are every variable `function` reads (a callable returning
    them is taken too, read at each call).
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, input_signature=input_signature, autograph=False)
    get_variables = variables if callable(variables) else (lambda: variables)
    if backend == "jax":
        import jax

        def pure(values, *args):
            mapping = list(zip(get_variables(), values))
            with keras.StatelessScope(state_mapping=mapping):
                return function(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in get_variables()], *args)
    import torch

    def eager(*args):
        with torch.no_grad():
            return function(*args)

    return eager


def input_gradients(function, inputs):
    """The gradient of `sum(function(inputs))` with respect to `inputs`."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(inputs)
            total = keras.ops.sum(function(inputs))
        return tape.gradient(total, inputs)
    if backend == "jax":
        import jax

        return jax.grad(lambda x: keras.ops.sum(function(x)))(inputs)
    import torch

    with torch.enable_grad():
        inputs = inputs.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(keras.ops.sum(function(inputs)), [inputs])
    return gradient
