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
    # Inpainting's: the fresh noise of eta = 1 left the smoothest seams at
    # this cost (docs/results/editing.md).
    "inpaint": dict(sampler="ddim", diffusion_steps=20, spacing="uniform", eta=1.0),
}


def sampling_settings(recipe="default", **given):
    """`recipe`'s sampler, step count and spacing, with the `given` ones
    (those not None) in their place."""
    if recipe not in SAMPLING_RECIPES:
        raise ValueError(
            f"unknown sampling recipe {recipe!r}; choose one of: {', '.join(SAMPLING_RECIPES)}"
        )
    settings = dict(SAMPLING_RECIPES[recipe])
    settings.update({name: value for name, value in given.items() if value is not None})
    return settings
