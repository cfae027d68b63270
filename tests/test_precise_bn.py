"""Precise BN: the EMA network's batch-norm statistics recomputed for its own weights."""

import keras
import numpy as np
import pytest

from conftest import blob_images, tiny_model
from diffusion_keras.data.datasets import ImageData
from diffusion_keras.training.precise_bn import (
    NetworkCopy,
    PreciseBatchNorm,
    average_statistics,
    batch_norm_layers,
    recompute_ema_statistics,
)


def random_inputs(model, count, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, *model.sample_shape)).astype(np.float32)
    variances = rng.uniform(0.1, 0.9, size=(count, 1, 1, 1)).astype(np.float32)
    return [images, variances]


@pytest.mark.parametrize("remat", [True, False])
def test_one_batch_statistics_make_inference_equal_training(remat):
    model = tiny_model(remat=remat)
    copy = NetworkCopy(model.ema_network)
    copy.network.set_weights(model.ema_network.get_weights())
    assert len(copy.norms) == len(batch_norm_layers(model.ema_network)) > 0
    inputs = random_inputs(model, 64, seed=1)
    average_statistics(copy, [inputs])
    training = keras.ops.convert_to_numpy(copy.network(inputs, training=True))
    inference = keras.ops.convert_to_numpy(copy.network(inputs, training=False))
    np.testing.assert_allclose(inference, training, atol=2e-4)


def test_several_batches_average_their_statistics():
    model = tiny_model()
    batches = [random_inputs(model, 16, seed) for seed in (1, 2, 3)]
    copy = NetworkCopy(model.ema_network)
    copy.network.set_weights(model.ema_network.get_weights())
    first = copy.norms[0]  # the first block's norm: its input depends on no other norm
    means = []
    for batch in batches:
        average_statistics(copy, [batch])
        means.append(np.asarray(first.moving_mean))
    average_statistics(copy, batches)
    np.testing.assert_allclose(np.asarray(first.moving_mean), np.mean(means, axis=0), atol=1e-5)


def test_recomputing_touches_only_the_ema_networks_statistics():
    model = tiny_model()
    model.fit(blob_images(32), batch_size=8, epochs=1, verbose=0)
    norms = batch_norm_layers(model.ema_network)
    statistics = {id(v) for n in norms for v in (n.moving_mean, n.moving_variance)}
    before = {id(v): np.array(v) for v in model.ema_network.weights}
    trained = [w.copy() for w in model.network.get_weights()]
    images = blob_images(32)
    recompute_ema_statistics(model, images, batch_size=8, seed=3)
    for variable in model.ema_network.weights:
        same = np.array_equal(np.asarray(variable), before[id(variable)])
        assert same == (id(variable) not in statistics), variable.path
    for a, b in zip(model.network.get_weights(), trained):
        np.testing.assert_array_equal(a, b)
    once = [w.copy() for w in model.ema_network.get_weights()]
    recompute_ema_statistics(model, images, batch_size=8, seed=3)
    for a, b in zip(model.ema_network.get_weights(), once):
        np.testing.assert_array_equal(a, b)  # same images and seed, same statistics


def test_the_callback_recomputes_at_whole_epoch_ends_only():
    model = tiny_model()
    data = ImageData((blob_images(40) * 255).astype(np.uint8))
    callback = PreciseBatchNorm(data, batches=2, batch_size=8, seed=0)
    callback.set_model(model)
    callback.epoch_is_whole = lambda epoch: epoch == 0
    before = [w.copy() for w in model.ema_network.get_weights()]
    callback.on_epoch_end(1)
    assert all(np.array_equal(a, b) for a, b in zip(model.ema_network.get_weights(), before))
    callback.on_epoch_end(0)
    assert not all(np.array_equal(a, b) for a, b in zip(model.ema_network.get_weights(), before))


def test_a_run_saved_before_precise_bn_resumes_without_it(tmp_path):
    import json

    from diffusion_keras.training.run import TrainConfig

    path = str(tmp_path / "config.json")
    TrainConfig().save(path)
    assert TrainConfig.load(path).precise_bn_batches == 16
    with open(path) as handle:
        old = json.load(handle)
    del old["precise_bn_batches"]
    with open(path, "w") as handle:
        json.dump(old, handle)
    assert TrainConfig.load(path).precise_bn_batches == 0
