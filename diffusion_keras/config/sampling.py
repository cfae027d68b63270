"""How `generate.py` and `generate()` sample unless told otherwise."""

# How `generate.py` samples unless told otherwise. "default" is the sampler
# that scored best per network evaluation on the real-data benches
# (`bench/recipe_race.py`, docs/results/real-data.md): SDE-DPM-Solver++(2M),
# whose fresh noise corrects the errors of a briefly trained model, over 10
# steps uniform in time. With the default recipe, its steps spaced in
# log-SNR (the default until 2026-12-06) lost 8 of 9 comparisons on the
# real-data benches (three models, three scorers), doubled the flowers'
# trained-feature KID and drew a third of the quick start as empty
# backgrounds. Before it, DPM-Solver++(2M) at 5 log-SNR steps
# (docs/results/samplers.md). "book" is the book's loop.
SAMPLING_RECIPES = {
    "default": dict(sampler="dpmpp_2m", diffusion_steps=10, spacing="uniform", eta=1.0),
    "book": dict(sampler="ddim", diffusion_steps=20, spacing="uniform"),
    # EDM's sampler (Karras et al. 2022): Heun steps on EDM's spacing with its
    # largest churn, 9 network evaluations; generate.py's default for models
    # trained LONG_RUN_STEPS or more (below).
    "edm": dict(sampler="heun", diffusion_steps=5, spacing="karras", eta=1.0),
    # Inpainting's: the fresh noise of eta = 1 left the smoothest seams at
    # this cost (docs/results/editing.md).
    "inpaint": dict(sampler="ddim", diffusion_steps=20, spacing="uniform", eta=1.0),
}


# The share of fresh noise per step a distilled student samples with unless
# told (its `sampling_defaults`, `generate.py`): DDIM over its own steps with
# eta 0.5. On the real-photo and landscape benches (two teachers each, 384
# steps; students of 8, 4 and 2 steps) it beat eta 0 in 26 of 36 held-out
# distances: the photos' check distance in 6 of 6 (by 4-8%), the landscapes'
# bench distance in 6 of 6; it lost the landscapes' check in 5 of 6, by at
# most 1.5%. Eta 1 won 22 of 36 and lost the landscapes' check by up to 6%
# (docs/results/distillation.md, 2026-12-07). A 1-step student's only step
# ends at the image, so it takes no fresh noise whatever eta says.
STUDENT_ETA = 0.5


# A sampler's own spacing, which it takes in place of a recipe's when it is not
# the recipe's sampler and no spacing is given. EDM's Heun steps need
# EDM's spacing: on the uniform one their first step, from sigma 50, overshoots
# (check distance 100 against 35 on the landscapes, docs/results/real-data.md).
OWN_SPACINGS = {"heun": "karras"}


# From this many training steps on, `generate.py` samples a model with `edm`
# where it would take `default` (`default_recipe`). On the landscapes and the
# photos (32x32, steps of 64, two noise seeds) `edm` cut `default`'s held-out
# check distance by 19-44% at 588 steps, 31-42% at 784 and 36-49% at 1,372 and
# 2,190, and won the bench and plain distances too but once; its coverage
# trailed in 4 of 15 comparisons, all on the photos, by 0.006-0.034. At 392 it
# tied on the landscapes and lost coverage on the photos by 0.05-0.12
# (docs/results/real-data.md, stop 54).
LONG_RUN_STEPS = 588


def default_recipe(train_steps):
    """The recipe `generate.py` samples a model trained `train_steps` steps
    with unless told: `edm` from `LONG_RUN_STEPS` on, else `default`."""
    return "edm" if int(train_steps) >= LONG_RUN_STEPS else "default"


def spacing_for(sampler, spacing, base):
    """The spacing to sample with: `spacing` if given, else `sampler`'s own
    (`OWN_SPACINGS`) where `sampler` is given, is not the sampler of `base`
    (the recipe's or a model's settings) and has one, else `base`'s."""
    if spacing is not None:
        return spacing
    if sampler not in (None, base["sampler"]):
        return OWN_SPACINGS.get(sampler, base["spacing"])
    return base["spacing"]


def sampling_settings(recipe="default", **given):
    """`recipe`'s sampler, step count and spacing, with the `given` ones
    (those not None) in their place; a given sampler that is not the
    recipe's, without a given spacing, takes its own (`OWN_SPACINGS`) if it
    has one."""
    if recipe not in SAMPLING_RECIPES:
        raise ValueError(
            f"unknown sampling recipe {recipe!r}; choose one of: {', '.join(SAMPLING_RECIPES)}"
        )
    settings = dict(SAMPLING_RECIPES[recipe])
    settings["spacing"] = spacing_for(given.get("sampler"), given.get("spacing"), settings)
    settings.update({name: value for name, value in given.items() if value is not None})
    return settings
