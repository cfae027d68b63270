import numpy as np
import pytest

from conftest import fit_on_blobs, tensorflow_only, tiny_model
from diffusion_keras.diffusion.schedules import get_schedule
from diffusion_keras.sampling.loop import Sampler
from diffusion_keras.sampling.rules import (
    HEUN_MAX_CHURN,
    KARRAS_RHO,
    MIN_LOG_SNR,
    churn_update,
    ddim_update,
    dpmpp_2m_update,
    log_snrs,
    network_evaluations,
    sampling_times,
    validate_sampler,
    validate_spacing,
)

SETTINGS = [("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("dpmpp_2m", 0.0), ("dpmpp_2m", 1.0),
            ("heun", 0.0), ("heun", 1.0)]  # fmt: skip
# Each sampler once more on log-SNR spacing, and EDM's on its own.
SPACED = [(*setting, "uniform") for setting in SETTINGS] + [
    ("ddim", 0.0, "log_snr"), ("ddim", 1.0, "log_snr"), ("dpmpp_2m", 0.0, "log_snr"),
    ("dpmpp_2m", 1.0, "log_snr"), ("heun", 0.0, "karras"), ("heun", 0.5, "karras"),
]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    fit_on_blobs(model, steps_per_epoch=100)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("sampler, eta", SETTINGS)
def test_every_sampler_is_finite_in_range_and_seeded(model, sampler, eta):
    a = model.generate(6, 8, seed=3, sampler=sampler, eta=eta)
    assert a.shape == (6, 16, 16, 3) and np.isfinite(a).all()
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, model.generate(6, 8, seed=3, sampler=sampler, eta=eta))
    assert not np.array_equal(a, model.generate(6, 8, seed=4, sampler=sampler, eta=eta))


@pytest.mark.parametrize("sampler, eta, spacing", SPACED)
def test_compiled_equals_eager_and_chunks_do_not_matter(model, sampler, eta, spacing):
    noise = model.make_noise(5, 1)
    settings = dict(diffusion_steps=6, seed=2, sampler=sampler, eta=eta, spacing=spacing)
    compiled = model.generate(initial_noise=noise, **settings)
    step_noises = model.generator._step_noises(2, range(5), 6) if eta else None
    eager = model.reverse_diffusion(noise, 6, sampler, eta, step_noises, spacing=spacing)
    # A compiled loop fuses ops where eager runs them one by one: float32
    # rounding carried over 6 steps (under JAX's jit, up to 1.2e-5 measured).
    # Heun's correction multiplies a difference of two predictions by sigma
    # (up to 50), and so the rounding: under JAX, 7.8e-5 measured against eager
    # and 7.6e-4 against a loop compiled for another batch size.
    atol = 1.5e-3 if sampler == "heun" else 5e-5
    np.testing.assert_allclose(compiled, np.asarray(model.denormalize(eager)), atol=atol)
    # So does a loop compiled for another batch size (under JAX, 1.3e-5 measured).
    stepped = model.generate(initial_noise=noise, progress=True, **settings)
    np.testing.assert_allclose(stepped, compiled, atol=atol)
    chunked = model.generate(initial_noise=noise, batch_size=2, **settings)
    np.testing.assert_allclose(chunked, compiled, atol=atol)
    if spacing != "uniform":
        uniform = model.generate(initial_noise=noise, **dict(settings, spacing="uniform"))
        assert np.abs(uniform - compiled).max() > 1e-3  # the spacing changed the path


@pytest.mark.parametrize("schedule", ["offset_cosine", "cosine", "linear"])
def test_log_snr_spacing_is_equal_steps_in_lambda_between_the_uniform_ends(schedule):
    schedule_function = get_schedule(schedule)
    uniform = sampling_times(schedule_function, 8)
    np.testing.assert_allclose(uniform, 1.0 - np.arange(9) / 8, atol=1e-7)
    times = sampling_times(schedule_function, 8, "log_snr")
    assert times.shape == (9,) and times.dtype == np.float32
    assert np.all(np.diff(times) < 0)  # always towards t = 0
    assert times[-1] == 0.0 and abs(times[-2] - 1.0 / 8) < 1e-4  # the same last evaluation
    lambdas = np.asarray(log_snrs(*schedule_function(times[:-1])), np.float64)
    steps = np.diff(lambdas)
    np.testing.assert_allclose(steps, steps.mean(), rtol=2e-3)
    # Starts at t = 1 unless the schedule is noisier there than MIN_LOG_SNR
    # (cosine: lambda = -inf; DDPM's linear: -5.02).
    if float(log_snrs(*schedule_function(1.0))) < MIN_LOG_SNR:
        assert schedule != "offset_cosine"
        assert times[0] < 1.0 and abs(lambdas[0] - MIN_LOG_SNR) < 1e-2
    else:
        assert times[0] == 1.0
    # More of the evaluations where the image is mostly noise than uniform gives.
    assert np.sum(times[:-1] > 0.5) > np.sum(uniform[:-1] > 0.5)
    np.testing.assert_array_equal(sampling_times(schedule_function, 1, "log_snr"), [1.0, 0.0])
    with pytest.raises(ValueError, match="unknown spacing 'cubic'; choose one of: uniform"):
        validate_spacing("cubic")


@pytest.mark.parametrize("schedule", ["offset_cosine", "linear"])
def test_karras_spacing_is_equal_steps_in_sigma_to_the_one_seventh_between_the_uniform_ends(
    schedule,
):
    schedule_function = get_schedule(schedule)
    times = sampling_times(schedule_function, 6, "karras")
    log_snr = sampling_times(schedule_function, 6, "log_snr")
    assert times.shape == (7,) and times.dtype == np.float32 and times[-1] == 0.0
    np.testing.assert_allclose(times[[0, -2]], log_snr[[0, -2]], atol=1e-4)  # the same ends
    noise_rates, signal_rates = (np.asarray(r, np.float64) for r in schedule_function(times[:-1]))
    roots = (noise_rates / signal_rates) ** (1.0 / KARRAS_RHO)
    np.testing.assert_allclose(np.diff(roots), np.diff(roots).mean(), rtol=2e-3)
    # Steps in sigma shrink as the noise falls; in log-SNR, where log_snr's are
    # equal, they grow: between log_snr and uniform, nearer log_snr.
    assert np.all(np.diff(np.abs(np.diff(noise_rates / signal_rates))) < 0)
    lambda_steps = np.diff(np.asarray(log_snrs(noise_rates, signal_rates)))
    assert np.all(np.diff(lambda_steps) > 0)


def test_eta_zero_is_plain_ddim_and_eta_is_continuous(model):
    plain = model.generate(4, 5, seed=9)
    np.testing.assert_array_equal(model.generate(4, 5, seed=9, sampler="ddim", eta=0.0), plain)
    # The stochastic formula tends to deterministic DDIM as eta goes to 0.
    rng = np.random.default_rng(0)
    shape = (2, 4, 4, 3)
    noises, images, fresh = (rng.standard_normal(shape).astype("float32") for _ in range(3))
    rates = [np.full((2, 1, 1, 1), v, np.float32) for v in (0.8, 0.6, 0.5, 0.866)]
    exact = ddim_update(noises, images, *rates)
    nearly = ddim_update(noises, images, *rates, eta=1e-6, step_noises=fresh)
    np.testing.assert_allclose(np.asarray(nearly), np.asarray(exact), atol=1e-5)


def test_sde_dpm_solver_is_the_ode_at_eta_zero_and_keeps_the_noise_level():
    """SDE-DPM-Solver++(2M): at eta 0 the fresh noise is unused and the step
    is the ODE solver's; at any eta, with a clean-image estimate of 0 (data
    that is all zeros) the next images have exactly the next noise level:
    what the kept part of the current noise loses, the fresh noise adds."""
    rng = np.random.default_rng(1)
    shape = (4000, 2, 2, 3)
    rates = dict(noise=0.9, next_noise=0.6, previous_noise=0.95)
    schedule = {k: (np.float32(v), np.float32(np.sqrt(1 - v**2))) for k, v in rates.items()}
    lambdas = {k: np.float32(np.log(a / n)) for k, (n, a) in schedule.items()}
    current = (rates["noise"] * rng.standard_normal(shape)).astype("float32")
    pred, previous = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    fresh = rng.standard_normal(shape).astype("float32")

    def step(pred, eta, noises, previous=previous):
        return np.asarray(dpmpp_2m_update(
            current, pred, previous, lambdas["noise"], lambdas["next_noise"],
            lambdas["previous_noise"], schedule["noise"][0], schedule["next_noise"][0],
            schedule["next_noise"][1], False, eta=eta, step_noises=noises,
        ))  # fmt: skip

    np.testing.assert_allclose(step(pred, 0.0, fresh), step(pred, 0.0, None), atol=1e-6)
    zeros = np.zeros_like(pred)
    for eta in (0.0, 0.5, 1.0):
        spread = float(step(zeros, eta, fresh, zeros).std())
        assert abs(spread - rates["next_noise"]) < 0.015, (eta, spread)
    # And the fresh noise is used: eta 1 moves the images from the ODE's.
    assert np.abs(step(pred, 1.0, fresh) - step(pred, 0.0, None)).mean() > 0.1


class GaussianData:
    """The exact denoiser of data drawn N(mean, std**2) in every pixel, on the
    book's schedule: E[x_0 | x_t] = m + a s**2 / (a**2 s**2 + n**2) (x_t - a m)
    with a, n the signal and noise rates."""

    sample_shape = (4, 4, 3)

    def __init__(self, mean=0.3, std=0.5):
        self.mean, self.std = mean, std
        self.diffusion_schedule = get_schedule("offset_cosine")

    def guided_denoise(self, noisy_images, noise_rates, signal_rates, guide=None):
        a, s, m = signal_rates, self.std, self.mean
        pred_images = m + a * s**2 / (a**2 * s**2 + noise_rates**2) * (noisy_images - a * m)
        return (noisy_images - a * pred_images) / noise_rates, pred_images


def test_second_order_sampler_is_closer_to_the_exact_denoisers_ode_solution():
    """With the exact denoiser of Gaussian data (the same on every backend),
    DPM-Solver++(2M) at 10 steps lands closer to a 1000-step solution of the
    ODE than DDIM does, on either spacing."""
    sampler = Sampler(GaussianData())
    noise = np.random.default_rng(5).standard_normal((16, 4, 4, 3)).astype("float32")
    reference = sampler.run(noise, 1000)
    for spacing in ["uniform", "log_snr"]:
        errors = {
            name: float(np.abs(sampler.run(noise, 10, sampler=name, spacing=spacing)
                               - reference).mean())
            for name in ["ddim", "dpmpp_2m"]
        }  # fmt: skip
        print(spacing, errors)  # measured: 0.053 / 0.044 uniform, 0.061 / 0.047 log-SNR
        assert errors["dpmpp_2m"] < 0.9 * errors["ddim"], spacing


def test_heun_is_second_order_and_closer_than_ddim_to_the_exact_denoisers_ode_solution():
    """EDM's Heun sampler (eta 0) against a 4,000-step solution of the same
    ODE to the same last time, with the exact denoiser of Gaussian data:
    closer than DDIM at the same steps, and its error falls about 4x as the
    steps double (second order) where DDIM's falls about 2x."""
    data = GaussianData()
    sampler = Sampler(data)
    noise = np.random.default_rng(5).standard_normal((16, 4, 4, 3)).astype("float32")
    errors = {}
    for steps in (10, 20):
        times = sampling_times(data.diffusion_schedule, steps, "karras")
        fine = np.append(np.linspace(1.0, times[-2], 4000), 0.0).astype("float32")
        reference = sampler.run(noise, 4000, times=fine)
        for name in ("heun", "ddim"):
            images = sampler.run(noise, steps, sampler=name, spacing="karras")
            errors[name, steps] = float(np.abs(images - reference).mean())
    print(errors)  # measured: heun 0.0150, 0.0038; ddim 0.0242, 0.0152
    assert errors["heun", 10] < errors["ddim", 10] and errors["heun", 20] < errors["ddim", 20]
    assert errors["heun", 10] / errors["heun", 20] > 3.0
    assert errors["ddim", 10] / errors["ddim", 20] < 2.5


class CountingDenoiser(GaussianData):
    """Counts the network evaluations (the images denoised, per image)."""

    def __init__(self):
        super().__init__()
        self.evaluations = 0

    def guided_denoise(self, noisy_images, noise_rates, signal_rates, guide=None):
        self.evaluations += 1
        return super().guided_denoise(noisy_images, noise_rates, signal_rates, guide)


@pytest.mark.parametrize("sampler, steps", [("ddim", 4), ("dpmpp_2m", 4), ("heun", 1),
                                            ("heun", 4)])  # fmt: skip
def test_heun_evaluates_the_network_twice_per_step_but_in_its_last(sampler, steps):
    from diffusion_keras.sampling.steps import reverse_diffusion

    denoiser = CountingDenoiser()
    noise = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype("float32")
    reverse_diffusion(denoiser, noise, steps, sampler)
    expected = 2 * steps - 1 if sampler == "heun" else steps
    assert denoiser.evaluations == network_evaluations(sampler, steps) == expected


def test_heuns_churn_raises_the_noise_to_its_share_of_edms_largest_and_no_higher():
    """The churn adds fresh noise so that images of sigma = noise / signal
    have sigma (1 + eta (sqrt(2) - 1)); clean images (all zeros) noised so
    come out with exactly the new noise rate, and never past the top sigma."""
    rng = np.random.default_rng(2)
    shape = (20000, 1, 1, 3)
    noise_rate, signal_rate = np.float32(0.6), np.float32(0.8)  # sigma 0.75
    current = (noise_rate * rng.standard_normal(shape)).astype("float32")
    fresh = rng.standard_normal(shape).astype("float32")
    for eta, top, expected_sigma in [(0.0, 50.0, 0.75), (1.0, 50.0, 0.75 * (1 + HEUN_MAX_CHURN)),
                                     (0.5, 50.0, 0.75 * (1 + 0.5 * HEUN_MAX_CHURN)),
                                     (1.0, 0.9, 0.9), (1.0, 0.5, 0.75)]:  # fmt: skip
        images, noise_rates, signal_rates = (
            np.asarray(x) for x in churn_update(current, noise_rate, signal_rate,
                                                np.float32(top), eta, fresh)
        )  # fmt: skip
        assert abs(float(noise_rates / signal_rates) - expected_sigma) < 1e-5, eta
        assert abs(float(noise_rates**2 + signal_rates**2) - 1.0) < 1e-5
        assert abs(float(images.std()) - float(noise_rates)) < 0.01, (eta, top)
        if expected_sigma == 0.75:  # no churn: the images as they were
            np.testing.assert_allclose(images, current, atol=1e-6)


@tensorflow_only("a measured property of the model that TensorFlow trains from this seed "
                 "(another backend draws other initial weights and training noise)")
def test_second_order_sampler_is_closer_to_the_ode_solution(model):
    """DDIM (eta 0) and DPM-Solver++(2M) solve the same ODE; with the same few
    steps the second-order solver lands closer to a 200-step solution."""
    noise = model.make_noise(16, 5)
    reference = model.generate(initial_noise=noise, diffusion_steps=200)
    errors = {}
    for sampler in ["ddim", "dpmpp_2m"]:
        images = model.generate(initial_noise=noise, diffusion_steps=10, sampler=sampler)
        errors[sampler] = float(np.abs(images - reference).mean())
    print(f"mean distance to a 200-step DDIM solution at 10 steps: {errors}")
    assert errors["dpmpp_2m"] < errors["ddim"]
    # Steps spaced equally in log-SNR land closer still, for both samplers.
    for sampler in ["ddim", "dpmpp_2m"]:
        images = model.generate(initial_noise=noise, diffusion_steps=10, sampler=sampler,
                                spacing="log_snr")  # fmt: skip
        error = float(np.abs(images - reference).mean())
        print(f"{sampler} with log_snr spacing: {error:.4f}")
        assert error < errors[sampler]


@pytest.mark.parametrize(
    "sampler, eta, message",
    [("euler", 0.0, "unknown sampler 'euler'"), ("ddim", 1.5, "eta must be in"),
     ("dpmpp_2m", -0.5, "eta must be in"), ("heun", 2.0, "eta must be in")],
)  # fmt: skip
def test_bad_sampler_settings_are_refused(sampler, eta, message):
    with pytest.raises(ValueError, match=message):
        validate_sampler(sampler, eta)


@pytest.mark.slow
def test_generate_cli_takes_a_sampler(model, tmp_path):
    from conftest import run_script

    path = tmp_path / "model.keras"
    model.save(path)
    for flags in (["--sampler", "dpmpp_2m", "--spacing", "log_snr"],
                  ["--sampler", "ddim", "--eta", "0.7"], ["--sampler", "dpmpp_2m", "--eta", "1"],
                  ["--sampler", "heun", "--spacing", "karras", "--eta", "1"]):
        out = tmp_path / "out.png"
        result = run_script("generate.py", path, "--num-images", 2, "--steps", 3, "--seed", 1,
                            "--output", out, *flags)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert out.exists()
        out.unlink()
    result = run_script("generate.py", path, "--sampler", "dpmpp_2m", "--eta", "1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("generate.py: error: ")
    assert "eta" in result.stderr.strip().splitlines()[-1]


def test_generate_samples_with_the_measured_default_and_the_book_one_flag_away():
    from diffusion_keras.sampling.rules import SAMPLING_RECIPES, sampling_settings

    assert sampling_settings("book") == dict(sampler="ddim", diffusion_steps=20, spacing="uniform")
    assert sampling_settings() == SAMPLING_RECIPES["default"]
    # Flags given win over the recipe; those not given (None) do not.
    assert sampling_settings("book", diffusion_steps=5, sampler=None) == dict(
        sampler="ddim", diffusion_steps=5, spacing="uniform"
    )
    # EDM's Heun sampler brings its own spacing unless one is given.
    assert sampling_settings(sampler="heun")["spacing"] == "karras"
    assert sampling_settings("book", sampler="heun", spacing="log_snr")["spacing"] == "log_snr"
    with pytest.raises(ValueError, match="unknown sampling recipe 'fast'"):
        sampling_settings("fast")


def test_generate_cli_settings_come_from_the_recipe_and_the_flags_given():
    """generate.py's sampler settings: the measured default (stochastic,
    with its eta), the recipe's eta only with the recipe's sampler,
    deterministic paths for --interpolate and --show-steps, --eta always wins,
    a sampler's own spacing where it has one."""
    from diffusion_keras.cli.generate import parser, sampling_arguments
    from diffusion_keras.sampling.rules import SAMPLING_RECIPES

    def settings(*flags):
        return sampling_arguments(parser().parse_args(["model.keras", *flags]))

    default = dict(SAMPLING_RECIPES["default"])
    default.setdefault("eta", 0.0)
    assert settings() == default
    assert settings("--recipe", "book") == dict(sampler="ddim", diffusion_steps=20,
                                                spacing="uniform", eta=0.0)  # fmt: skip
    assert settings("--eta", "0.3")["eta"] == 0.3
    assert settings("--eta", "0.3")["sampler"] == default["sampler"]
    other = "ddim" if default["sampler"] != "ddim" else "dpmpp_2m"
    assert settings("--sampler", other)["eta"] == 0.0  # the recipe's eta stays with its sampler
    assert settings("--interpolate")["eta"] == 0.0
    assert settings("--show-steps", "1,2")["eta"] == 0.0
    assert settings("--interpolate", "--eta", "1")["eta"] == 1.0
    assert settings("--init-image", "x.png", "--mask", "m.png")["eta"] == 1.0  # inpaint's
    assert settings("--init-image", "x.png")["eta"] == 0.0  # image-to-image keeps its image
    assert settings("--recipe", "edm") == dict(sampler="heun", diffusion_steps=5,
                                               spacing="karras", eta=1.0)  # fmt: skip
    # A model trained LONG_RUN_STEPS or more samples with edm unless told, its
    # image-to-image without fresh noise as the default's.
    from diffusion_keras.config.sampling import LONG_RUN_STEPS

    def trained(steps, *flags):
        return sampling_arguments(parser().parse_args(["model.keras", *flags]), None, steps)

    edm = dict(sampler="heun", diffusion_steps=5, spacing="karras", eta=1.0)
    assert trained(LONG_RUN_STEPS) == edm and trained(LONG_RUN_STEPS - 1) == default
    assert trained(LONG_RUN_STEPS, "--recipe", "default") == default
    assert trained(LONG_RUN_STEPS, "--init-image", "x.png") == dict(edm, eta=0.0)
    assert trained(LONG_RUN_STEPS, "--init-image", "x.png", "--mask", "m.png")["sampler"] == "ddim"
    assert trained(LONG_RUN_STEPS, "--sampler", "dpmpp_2m")["eta"] == 0.0
    # EDM's sampler brings EDM's spacing, for a student too, unless --spacing is given.
    assert settings("--sampler", "heun")["spacing"] == "karras"
    assert settings("--sampler", "heun", "--spacing", "uniform")["spacing"] == "uniform"
    student = dict(sampler="ddim", diffusion_steps=4, spacing="uniform", eta=0.0)
    args = parser().parse_args(["student.keras", "--sampler", "heun"])
    assert sampling_arguments(args, student) == dict(student, sampler="heun", spacing="karras")
