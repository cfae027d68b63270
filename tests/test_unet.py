import keras
import numpy as np
import pytest

from conftest import conv_layers, tensorflow_only
from diffusion_keras.nn.unet import build_unet


def test_book_unet_has_the_books_weight_count_and_shapes():
    unet = build_unet()
    assert unet.count_params() == 1_953_507
    assert [tuple(i.shape) for i in unet.inputs] == [(None, 64, 64, 3), (None, 1, 1, 1)]
    assert tuple(unet.output.shape) == (None, 64, 64, 3)
    names = [type(layer).__name__ for layer in unet.layers]
    assert "Lambda" not in names
    assert names.count("AveragePooling2D") == 3
    assert names.count("UpSampling2D") == 4  # the embedding's, then 3 up blocks


def test_untrained_unet_predicts_no_noise():
    unet = build_unet(image_size=16, widths=(8, 16), block_depth=1)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    variances = np.full((2, 1, 1, 1), 0.5, np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(unet([images, variances])), 0.0)


def test_unet_clones_and_reloads(tmp_path):
    unet = build_unet(image_size=16, widths=(8, 16), block_depth=1)
    clone = keras.models.clone_model(unet)
    assert clone.count_params() == unet.count_params()
    path = str(tmp_path / "unet.keras")
    unet.save(path)
    assert keras.models.load_model(path).count_params() == unet.count_params()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30), "multiple of 8"),
        (dict(widths=(32,)), "at least two"),
        (dict(block_depth=0), "block depth"),
    ],
)
def test_impossible_sizes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet(**kwargs)


def _training_step(network, images, variances):
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            outputs = network([images, variances], training=True)
            loss = tf.reduce_mean(tf.abs(outputs - 0.1) + tf.square(outputs))
        return outputs, tape.gradient(loss, network.trainable_weights)

    return step


@pytest.mark.slow
def test_remat_unet_is_the_same_network_trained_the_same_way():
    """`remat=True` groups each residual block into one layer that recomputes
    its batch norm and swish in the backward pass: the same weights (same
    seed), outputs, gradients and moving statistics as the book's layers."""
    size, widths = 16, (8, 16, 24)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, size, size, 3)).astype("float32")
    variances = rng.uniform(size=(4, 1, 1, 1)).astype("float32")
    results = {}
    for remat in (False, True):
        network = build_unet(size, widths=widths, seed=3, remat=remat)
        assert network.count_params() == 53_883
        # A non-zero output conv, so that every layer gets a gradient.
        kernel = network.layers[-1].kernel
        kernel.assign(np.random.default_rng(5).normal(size=kernel.shape).astype("float32") * 0.3)
        before = network([images, variances], training=False)
        outputs, gradients = _training_step(network, images, variances)()
        by_weight = {id(w): np.asarray(g) for w, g in zip(network.trainable_weights, gradients)}
        convs = {}
        for conv in conv_layers(network):
            key = np.asarray(conv.kernel).tobytes()  # the initial kernels match across the two
            convs[key] = (by_weight[id(conv.kernel)], by_weight[id(conv.bias)])
        moving = sorted(
            float(np.sum(w)) for w in network.non_trainable_weights if "moving" in w.path
        )
        results[remat] = (np.asarray(before), np.asarray(outputs), convs, moving)
    assert len(build_unet(size, widths=widths, remat=True).layers) < 30
    flat, remat = results[False], results[True]
    np.testing.assert_array_equal(flat[0], remat[0])
    np.testing.assert_allclose(flat[1], remat[1], atol=1e-5)
    assert flat[2].keys() == remat[2].keys() and len(flat[2]) == 29
    for key, (kernel_gradient, bias_gradient) in flat[2].items():
        assert np.abs(kernel_gradient).sum() > 0
        np.testing.assert_allclose(remat[2][key][0], kernel_gradient, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(remat[2][key][1], bias_gradient, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(flat[3], remat[3], rtol=1e-5, atol=1e-6)


def bytes_kept_for_backward(step):
    """Bytes of the activations a traced training step keeps for its backward
    pass: tensors computed on the way to the network's outputs that the
    gradient computation reads (weights and constants left out).

    Read off the graph as traced, so it is the same on every CPU, with or
    without oneDNN; TensorFlow frees every other forward tensor as soon as the
    forward pass is done with it. (TensorFlow's own CPU memory statistics,
    `get_memory_info("CPU:0")`, exist only with some allocators: with oneDNN
    off they raise.)
    """
    graph = step.get_concrete_function().graph
    outputs, gradients = graph.structured_outputs

    def ancestors(tensors):
        seen, stack = set(), [t.op for t in tensors]
        while stack:
            op = stack.pop()
            if op not in seen:
                seen.add(op)
                stack.extend(t.op for t in op.inputs)
                stack.extend(op.control_inputs)
        return seen

    forward = ancestors([outputs])
    backward = ancestors([g for g in gradients if g is not None]) - forward
    kept = {
        t.ref()
        for op in backward
        for t in op.inputs
        if t.op in forward and t.op.type not in ("Const", "ReadVariableOp", "Placeholder")
    }
    # Unknown shapes are empty reserve-space outputs of the fused batch norm.
    return sum((r.deref().shape.num_elements() or 0) * r.deref().dtype.size for r in kept)


@tensorflow_only("remat recomputes through TensorFlow's custom gradient")
def test_remat_unet_trains_in_less_memory():
    import tensorflow as tf

    def kept(remat, size=32, batch=16):
        network = build_unet(size, widths=(16, 32, 48), seed=1, remat=remat)
        images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype("float32")
        variances = np.full((batch, 1, 1, 1), 0.3, np.float32)
        return bytes_kept_for_backward(
            _training_step(network, tf.constant(images), tf.constant(variances))
        )

    flat, remat = kept(False), kept(True)
    # The book's layers keep about 8 activations of the batch per residual
    # block; at this size that is tens of MB (measured: 41.2 MB).
    assert flat > 16 * 32 * 32 * 16 * 4 * 8, flat
    # Measured: 17.1 MB, 0.42x (TensorFlow's allocator peak, with oneDNN on,
    # went from 45.1 to 30.7 MB, 0.68x: the recomputation needs some room).
    assert remat < 0.5 * flat, (flat, remat)


def test_remat_book_unet_has_the_books_weight_count():
    assert build_unet(remat=True).count_params() == 1_953_507
