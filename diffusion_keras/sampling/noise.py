"""Seeded Gaussian noise that numpy, every Keras backend and an exported graph draw alike.

The bits are Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers:
as easy as 1, 2, 3"), a counter-based generator: block `b` of stream `s`
under key `k` is a pure function of `(k, s, b)`, so any slice of any stream
can be drawn without drawing what comes before it. It is the generator of
TensorFlow's stateless random ops, laid out as they lay it out (key = the
seed's 64 bits; the 128-bit counter = the block number in its low 64 bits
and the stream in its high 64), so an exported graph draws the same words
with `tf.raw_ops.StatelessRandomUniformFullIntV2` (`diffusion_keras.export`).

Each block gives four 32-bit words, and each pair of words two normal
numbers by the Box-Muller transform, computed in float64 and rounded to
float32: both sides round the same correctly computed float64 values, so
they give the same float32 noise bit for bit (a float64 error large enough
to move a float32 rounding is about 1e-9 likely per number).

The streams of the package (`STREAMS`): the initial noise of `generate`
(all images in one stream, image after image, so that image i's noise
depends only on the seed and i), the fresh noise of step `t` of stochastic
sampling, and draw `d` of RePaint's resampling.
"""

import numpy as np

MASK = 0xFFFFFFFF
# Philox4x32's multipliers and Weyl key increments (Random123; TensorFlow's
# `philox_random.h`).
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
# The high 32 bits of a stream number say what it is for; the low ones which.
STREAMS = {"initial": 0, "step": 1, "resample": 2}


def stream(kind, index=0):
    """The 64-bit stream number of `kind` ("initial", "step", "resample") and index."""
    return (STREAMS[kind] << 32) | int(index)


def key_of(seed):
    """A seed's 64-bit key: any Python or numpy integer, taken modulo 2**64,
    as an int64 seed's bits are; None draws one from the operating system."""
    if seed is None:
        return int(np.random.SeedSequence().entropy) & 0xFFFFFFFFFFFFFFFF
    try:
        return int(seed) % (1 << 64)
    except (TypeError, ValueError):
        raise ValueError(f"a seed must be an integer, got {seed!r}") from None


def philox_words(key, stream_number, first_block, blocks):
    """The 32-bit words of blocks `first_block ... first_block + blocks - 1`
    of a stream, `(blocks * 4,)` uint32."""
    counter = np.arange(first_block, first_block + blocks, dtype=np.uint64)
    c0 = counter & np.uint64(MASK)
    c1 = counter >> np.uint64(32)
    c2 = np.full_like(c0, stream_number & MASK)
    c3 = np.full_like(c0, stream_number >> 32)
    k0, k1 = key & MASK, key >> 32
    m0, m1, mask, shift = np.uint64(M0), np.uint64(M1), np.uint64(MASK), np.uint64(32)
    for _ in range(ROUNDS):
        p0, p1 = c0 * m0, c2 * m1  # both factors < 2**32: exact in 64 bits
        c0, c1, c2, c3 = (
            (p1 >> shift) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32).reshape(-1)


def box_muller(words):
    """Normal numbers from 32-bit words, two per pair, in float64; the same
    arithmetic as `export`'s graph (`u` in (0, 1) never 0)."""
    words = words.astype(np.float64).reshape(-1, 2)
    radius = np.sqrt(-2.0 * np.log((words[:, 0] + 0.5) * 2.0**-32))
    angle = (2.0 * np.pi * 2.0**-32) * words[:, 1]
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)


def normal(seed, stream_number, shape, offset=0):
    """Standard normal float32 numbers of `shape`: elements `offset ...` of
    the stream, in row-major order."""
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape, dtype=np.int64))
    first, skip = divmod(int(offset), 4)
    blocks = -(-(skip + size) // 4)
    words = philox_words(key_of(seed), stream_number, first, blocks)
    return box_muller(words)[skip : skip + size].astype(np.float32).reshape(shape)


def initial_noise(sample_shape, num_images, seed=None, first_image=0):
    """The starting noise `(num_images, *sample_shape)` of images
    `first_image ...` under `seed`: image i's is the same whatever the count."""
    per_image = int(np.prod(sample_shape))
    return normal(seed, stream("initial"), (num_images, *sample_shape), first_image * per_image)


def step_noises(sample_shape, seed, indices, diffusion_steps):
    """Fresh noise for stochastic sampling, `(steps, n, *sample_shape)`, for
    the images numbered `indices` (consecutive): step t's comes from stream
    ("step", t), image after image, so it depends on neither the batch size
    nor the Keras backend."""
    return _per_draw("step", sample_shape, seed, indices, diffusion_steps)


def resample_noises(sample_shape, seed, indices, diffusion_steps, resample):
    """The fresh noise of RePaint's resampling, `(steps * resample, n,
    *sample_shape)`: draw `step * resample + repeat` from stream
    ("resample", draw). A single row of zeros when `resample` is 1, which
    draws none."""
    if int(resample) <= 1:
        return np.zeros((1, len(indices), *sample_shape), np.float32)
    return _per_draw("resample", sample_shape, seed, indices, diffusion_steps * int(resample))


def _per_draw(kind, sample_shape, seed, indices, draws):
    indices = list(indices)
    first = indices[0] if indices else 0
    if indices != list(range(first, first + len(indices))):
        raise ValueError(f"noise is drawn for consecutive image numbers, got {indices}")
    per_image = int(np.prod(sample_shape))
    shape = (len(indices), *sample_shape)
    return np.stack(
        [normal(seed, stream(kind, draw), shape, first * per_image) for draw in range(draws)]
    ).reshape((draws, *shape))
