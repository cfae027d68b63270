"""Seeded noise: Philox4x32-10 and Box-Muller in numpy, drawn alike everywhere.

The same seed gives the same noise on every machine, batch size and Keras
backend, and in an exported TensorFlow graph (`export.graph_normal`), bit for bit.
"""

import numpy as np
import pytest

from diffusion_keras.sampling import noise

FULL = (1 << 64) - 1


@pytest.mark.parametrize(
    "key, counter, expected",
    [
        # Random123's known answers for philox4x32_10 (its kat_vectors file).
        (0, 0, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        (FULL, (FULL, FULL), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (0x299F31D0A4093822, (0x85A308D3243F6A88, 0x0370734413198A2E),
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ],
)  # fmt: skip
def test_philox_gives_random123s_known_answers(key, counter, expected):
    block, stream = (0, 0) if counter == 0 else counter
    np.testing.assert_array_equal(noise.philox_words(key, stream, block, 1), expected)


def test_philox_words_are_tensorflows_stateless_words():
    import tensorflow as tf

    for seed, stream, first in [(0, 0, 0), (-3, noise.stream("step", 9), 5),
                                (2**40 + 7, noise.stream("resample", 2), 2**33 + 1)]:  # fmt: skip
        key = tf.bitcast(tf.constant([seed], tf.int64), tf.uint64)
        theirs = tf.raw_ops.StatelessRandomUniformFullIntV2(
            shape=[4 * 300], key=key, counter=tf.constant([first, stream], tf.uint64), alg=1,
            dtype=tf.uint32,
        )  # fmt: skip
        mine = noise.philox_words(noise.key_of(seed), stream, first, 300)
        np.testing.assert_array_equal(mine, theirs.numpy())


def test_the_graph_draws_the_same_noise_bit_for_bit():
    import tensorflow as tf

    from diffusion_keras.export.saved_model import graph_normal

    shape = (5, 6, 3)  # 90 numbers an image: not a whole number of blocks
    for seed in (0, 123456789012345, -1):
        key = tf.bitcast(tf.constant([seed], tf.int64), tf.uint64)
        graph = graph_normal(key, noise.stream("step", 4), tf.constant(7), shape).numpy()
        np.testing.assert_array_equal(graph, noise.normal(seed, noise.stream("step", 4),
                                                          (7, *shape)))  # fmt: skip


def test_noise_is_standard_normal():
    drawn = noise.normal(11, noise.stream("initial"), (200_000,))
    assert drawn.dtype == np.float32 and np.isfinite(drawn).all()
    values = drawn.astype(np.float64)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1.0) < 0.01
    # The tails of a normal distribution: P(|z| > 2) = 0.0455, P(|z| > 3) = 0.0027.
    assert abs(np.mean(np.abs(values) > 2.0) - 0.0455) < 0.002
    assert abs(np.mean(np.abs(values) > 3.0) - 0.0027) < 0.0005


def test_an_images_noise_depends_only_on_the_seed_and_its_number():
    shape = (4, 4, 3)
    ten = noise.initial_noise(shape, 10, seed=5)
    np.testing.assert_array_equal(noise.initial_noise(shape, 3, seed=5), ten[:3])
    np.testing.assert_array_equal(noise.initial_noise(shape, 4, seed=5, first_image=6), ten[6:])
    assert not np.array_equal(noise.initial_noise(shape, 3, seed=6), ten[:3])


def test_step_noise_does_not_depend_on_the_batches():
    shape = (4, 4, 3)
    whole = noise.step_noises(shape, 3, range(0, 8), 5)
    assert whole.shape == (5, 8, *shape)
    parts = np.concatenate([noise.step_noises(shape, 3, range(0, 3), 5),
                            noise.step_noises(shape, 3, range(3, 8), 5)], axis=1)  # fmt: skip
    np.testing.assert_array_equal(parts, whole)
    assert not np.array_equal(whole[0], whole[1])  # each step its own noise
    assert not np.array_equal(whole[0], noise.initial_noise(shape, 8, 3))
    with pytest.raises(ValueError, match="consecutive"):
        noise.step_noises(shape, 3, [0, 2], 5)


def test_resampling_noise_is_its_own_stream_and_empty_without_resampling():
    shape = (4, 4, 3)
    assert not noise.resample_noises(shape, 3, range(2), 5, 1).any()
    drawn = noise.resample_noises(shape, 3, range(2), 5, 2)
    assert drawn.shape == (10, 2, *shape)
    assert not np.array_equal(drawn[:5], noise.step_noises(shape, 3, range(2), 5))


def test_seeds_are_taken_modulo_2_to_the_64_as_int64_bits_are():
    shape = (2, 2, 3)
    np.testing.assert_array_equal(noise.initial_noise(shape, 2, -1),
                                  noise.initial_noise(shape, 2, FULL))  # fmt: skip
    np.testing.assert_array_equal(noise.initial_noise(shape, 2, np.int64(7)),
                                  noise.initial_noise(shape, 2, 7))  # fmt: skip
    assert not np.array_equal(noise.initial_noise(shape, 2, None),
                              noise.initial_noise(shape, 2, None))  # fmt: skip
    with pytest.raises(ValueError, match="a seed must be an integer"):
        noise.initial_noise(shape, 2, "seven")
