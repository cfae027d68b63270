"""Seeds derived from a user's seed, in the range every backend takes."""

# JAX takes a seed as a uint32 and TensorFlow's stateless ops as an int32 pair:
# seeds derived by arithmetic are folded into [0, 2**31 - 1).
SEED_MODULUS = 2**31 - 1


def derived_seed(seed, scale=1, offset=0):
    """`seed * scale + offset`, folded into the range every backend takes
    (unchanged while it is below 2**31 - 1); None stays None (unseeded)."""
    if seed is None:
        return None
    return (int(seed) * scale + offset) % SEED_MODULUS
