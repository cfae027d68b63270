"""The KL autoencoder of latent diffusion: shapes, training, latent scale, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import blob_images
from diffusion_keras.models.autoencoder import Autoencoder

numpy = keras.ops.convert_to_numpy  # detached: a PyTorch tensor may require grad

TINY_AE = dict(factor=4, widths=(8, 16, 16), seed=1)


def trained(steps=150, **overrides):
    settings = {**TINY_AE, **overrides}
    autoencoder = Autoencoder(**settings)
    autoencoder.compile(keras.optimizers.Adam(3e-3))
    data = blob_images(64, 16)
    dataset = tf.data.Dataset.from_tensor_slices(data).repeat().shuffle(64, seed=0).batch(16)
    history = autoencoder.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return autoencoder, data, history


@pytest.fixture(scope="module")
def autoencoder_and_data():
    autoencoder, data, _ = trained()
    autoencoder.measure_latent_scale(data)
    return autoencoder, data


def reconstruction(autoencoder, data):
    if not autoencoder.compiled:
        autoencoder.compile()
    return autoencoder.evaluate(data, batch_size=32, verbose=0, return_dict=True)


@pytest.mark.parametrize("factor,widths", [(4, (8, 16, 16)), (8, (8, 8, 16, 16))])
def test_latents_are_the_image_size_over_the_factor(factor, widths):
    autoencoder = Autoencoder(factor=factor, widths=widths, latent_channels=3)
    latents = autoencoder.encode(np.zeros((2, 32, 32, 3), np.float32))
    assert latents.shape == (2, 32 // factor, 32 // factor, 3)
    assert autoencoder.latent_shape(32) == (32 // factor, 32 // factor, 3)
    assert autoencoder.decode(latents).shape == (2, 32, 32, 3)


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(factor=3), "factor must be one of"),
        (dict(factor=4, widths=(8, 16)), "needs 3 widths"),
        (dict(factor=4, widths=(8, 12, 16)), "multiple of groups"),
        (dict(latent_channels=0), "latent_channels"),
        (dict(kl_weight=-1.0), "must be >= 0"),
    ],
)
def test_bad_arguments_say_what_is_wrong(settings, message):
    with pytest.raises(ValueError, match=message):
        Autoencoder(**settings)


def test_an_image_size_not_divisible_by_the_factor_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        Autoencoder(**TINY_AE).latent_shape(30)


@pytest.mark.slow
def test_training_learns_to_reconstruct(autoencoder_and_data):
    autoencoder, data = autoencoder_and_data
    untrained = reconstruction(Autoencoder(**TINY_AE), data)
    result = reconstruction(autoencoder, data)
    print(untrained, result)
    assert result["psnr"] > untrained["psnr"] + 8.0
    assert result["ssim"] > untrained["ssim"] + 0.3
    assert result["l1"] < untrained["l1"] / 3 and result["kl"] > 0.0


def test_latent_scale_gives_unit_variance_and_is_saved(autoencoder_and_data, tmp_path):
    autoencoder, data = autoencoder_and_data
    latents = keras.ops.convert_to_numpy(autoencoder.encode(data))
    assert abs(latents.std() - 1.0) < 1e-3
    path = str(tmp_path / "ae.keras")
    autoencoder.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, Autoencoder)
    assert float(loaded.latent_scale) == float(autoencoder.latent_scale) != 1.0
    assert loaded.get_config() == autoencoder.get_config()
    np.testing.assert_array_equal(numpy(loaded.encode(data[:4])),
                                  numpy(autoencoder.encode(data[:4])))  # fmt: skip
    np.testing.assert_array_equal(numpy(loaded.decode(latents[:4])),
                                  numpy(autoencoder.decode(latents[:4])))  # fmt: skip


def test_a_dataset_measures_the_same_scale_as_an_array(autoencoder_and_data):
    autoencoder, data = autoencoder_and_data
    by_array = autoencoder.measure_latent_scale(data)
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(len(data)))).batch(10)
    assert autoencoder.measure_latent_scale(dataset) == pytest.approx(by_array, rel=1e-5)


def test_encoding_is_the_posterior_mean_unless_sampled_with_a_seed(autoencoder_and_data):
    autoencoder, data = autoencoder_and_data
    means = keras.ops.convert_to_numpy(autoencoder.moments(data[:4])[0]) * float(
        autoencoder.latent_scale
    )
    np.testing.assert_allclose(numpy(autoencoder.encode(data[:4])), means, rtol=1e-6)
    first = numpy(autoencoder.encode(data[:4], sample=True, seed=5))
    np.testing.assert_array_equal(first, numpy(autoencoder.encode(data[:4], sample=True, seed=5)))
    assert not np.array_equal(first, numpy(autoencoder.encode(data[:4], sample=True, seed=6)))


def test_uint8_and_0_255_pixels_read_as_unit_range(autoencoder_and_data):
    autoencoder, _ = autoencoder_and_data
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    unit = numpy(autoencoder.encode(pixels.astype(np.float32) / 255.0))
    np.testing.assert_allclose(numpy(autoencoder.encode(pixels)), unit, atol=1e-5)
    np.testing.assert_allclose(numpy(autoencoder.encode(pixels.astype(np.float32))), unit,
                               atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_the_patch_discriminator_trains_only_after_its_start():
    autoencoder = Autoencoder(**TINY_AE, discriminator_weight=0.1, discriminator_start=2)
    autoencoder.compile(keras.optimizers.Adam(1e-3))
    images = blob_images(8, 16)

    def change_over_two_steps():
        before = [w.numpy().copy() for w in autoencoder.discriminator.trainable_weights]
        history = autoencoder.fit(images, batch_size=4, epochs=1, verbose=0, shuffle=False)
        assert np.isfinite(history.history["discriminator_loss"]).all()
        after = autoencoder.discriminator.trainable_weights
        return max(np.abs(a.numpy() - b).max() for a, b in zip(after, before))

    assert change_over_two_steps() == 0.0  # steps 0 and 1: before the start
    assert change_over_two_steps() > 0.0
