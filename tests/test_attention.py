"""Attention in the U-Net: self-attention over positions, cross-attention to a class token."""

import keras
import numpy as np
import pytest

from diffusion_keras import DiffusionModel
from diffusion_keras.nn.attention import SpatialAttention
from diffusion_keras.nn.unet import build_unet

TINY = dict(image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8, seed=1)
rng = np.random.default_rng(0)


def randomise_projections(network):
    """Gives every attention block a non-zero output projection (they start at zero)."""
    for layer in network.layers:
        if isinstance(layer, SpatialAttention):
            kernel = layer.projection.kernel
            kernel.assign(rng.normal(0.0, 0.5, kernel.shape).astype("float32"))


def test_a_new_attention_block_is_the_identity():
    x = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(SpatialAttention(2)(x)), x)
    context = rng.normal(size=(2, 3, 5)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(SpatialAttention(2)([x, context])), x)


def test_scores_are_distributions_over_positions_or_tokens():
    x = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    block = SpatialAttention(2)
    scores = keras.ops.convert_to_numpy(block.attention_scores(x))
    assert scores.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, rtol=1e-5)
    context = rng.normal(size=(2, 3, 5)).astype("float32")
    cross = SpatialAttention(2)
    cross([x, context])
    assert tuple(cross.attention_scores([x, context]).shape) == (2, 2, 16, 3)


def test_the_layer_round_trips_its_config():
    block = SpatialAttention(3, key_dim=5, name="attend")
    again = SpatialAttention.from_config(block.get_config())
    assert (again.num_heads, again.key_dim, again.name) == (3, 5, "attend")


def test_the_default_network_has_no_attention_and_the_books_weights():
    network = build_unet()
    assert network.count_params() == 1_953_507
    assert not any(isinstance(layer, SpatialAttention) for layer in network.layers)


def test_attention_levels_put_blocks_after_each_residual_block():
    # Level 0: two down-block and two up-block residual blocks at 16x16 with
    # block_depth 2; level 1 (the middle): two more.
    network = build_unet(**{**TINY, "block_depth": 2}, attention_levels=(0, 1))
    blocks = [layer for layer in network.layers if isinstance(layer, SpatialAttention)]
    assert len(blocks) == 6


def test_the_class_enters_only_through_cross_attention():
    network = build_unet(**TINY, num_classes=3, attention_levels=(1,), cross_attention=True)
    images = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    variances = np.full((2, 1, 1, 1), 0.5, "float32")

    def outputs(label):
        return keras.ops.convert_to_numpy(
            network([images, variances, np.full((2,), label, "int32")])
        )

    network.layers[-1].kernel.assign(rng.normal(0.0, 0.1, network.layers[-1].kernel.shape))
    np.testing.assert_array_equal(outputs(0), outputs(1))  # zero projections: no class
    randomise_projections(network)
    assert np.abs(outputs(0) - outputs(1)).max() > 1e-3


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(attention_levels=(2,)), "attention levels must be in 0..1"),
        (dict(attention_levels=(0,), attention_heads=0), "heads must be >= 1"),
        (dict(attention_levels=(0,), cross_attention=True), "conditional model"),
        (dict(num_classes=2, cross_attention=True), "needs attention levels"),
    ],
)
def test_bad_attention_settings_say_what_is_wrong(settings, message):
    with pytest.raises(ValueError, match=message):
        build_unet(**TINY, **settings)


@pytest.mark.slow
def test_a_model_with_attention_saves_and_generates_the_same_images(tmp_path):
    model = DiffusionModel(
        **TINY, num_classes=2, attention_levels=(0, 1), attention_heads=2, cross_attention=True
    )
    model.adapt(rng.uniform(size=(8, 16, 16, 3)))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(rng.uniform(size=(16, 16, 16, 3)), np.arange(16) % 2, batch_size=8, verbose=0)
    path = str(tmp_path / "attention.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.attention_levels == [0, 1] and loaded.cross_attention
    settings = dict(seed=0, class_labels=[0, 1])
    np.testing.assert_array_equal(
        loaded.generate(2, 3, **settings), model.generate(2, 3, **settings)
    )
    bfloat16 = model.with_precision("mixed_bfloat16")
    assert (
        np.abs(bfloat16.generate(2, 3, **settings) - model.generate(2, 3, **settings)).mean() < 0.05
    )
