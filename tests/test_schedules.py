import numpy as np
import pytest

from diffusion_keras.diffusion.schedules import SCHEDULES, get_schedule, linear_schedule

TIMES = np.linspace(0.0, 1.0, 1001, dtype=np.float32)


@pytest.mark.parametrize("name", SCHEDULES)
def test_rates_are_on_the_unit_circle(name):
    noise_rates, signal_rates = map(np.asarray, get_schedule(name)(TIMES))
    np.testing.assert_allclose(noise_rates**2 + signal_rates**2, 1.0, atol=1e-5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_signal_falls_and_noise_rises(name):
    noise_rates, signal_rates = map(np.asarray, get_schedule(name)(TIMES))
    assert np.all(np.diff(signal_rates) < 0)
    assert np.all(np.diff(noise_rates) > 0)


def test_endpoints():
    noise, signal = map(np.asarray, get_schedule("offset_cosine")(np.array([0.0, 1.0])))
    np.testing.assert_allclose(signal, [0.95, 0.02], atol=1e-6)
    noise, signal = map(np.asarray, get_schedule("offset_cosine", 0.1, 0.9)(np.array([0.0, 1.0])))
    np.testing.assert_allclose(signal, [0.9, 0.1], atol=1e-6)
    noise, signal = map(np.asarray, get_schedule("cosine")(np.array([0.0, 1.0])))
    np.testing.assert_allclose(signal, [1.0, 0.0], atol=1e-6)
    noise, signal = map(np.asarray, get_schedule("linear")(np.array([0.0, 1.0])))
    assert signal[0] == pytest.approx(1.0)
    assert signal[1] == pytest.approx(np.exp(-1000 * (1e-4 + (0.02 - 1e-4) / 2) / 2), rel=1e-4)


def test_linear_matches_the_books_discrete_schedule():
    # The book: betas linear in t = k/T, alpha_bar = cumprod(1 - betas).
    steps = 1000
    times = np.arange(steps) / steps
    betas = 1e-4 + times * (0.02 - 1e-4)
    book_signal = np.sqrt(np.cumprod(1.0 - betas))
    _, signal = linear_schedule(times.astype(np.float32))
    assert np.max(np.abs(np.asarray(signal) - book_signal)) < 2e-3


def test_linear_depends_on_time_alone():
    _, alone = linear_schedule(np.array([0.5], np.float32))
    _, in_batch = linear_schedule(np.array([0.1, 0.9, 0.5], np.float32))
    assert float(alone[0]) == pytest.approx(float(in_batch[2]))


def test_bad_names_and_rates_are_refused():
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'"):
        get_schedule("sigmoid")
    with pytest.raises(ValueError, match="min_signal_rate < max_signal_rate"):
        get_schedule("offset_cosine", 0.9, 0.5)
