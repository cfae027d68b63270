import numpy as np
import pytest

from diffusion_keras.models import toy1d


def test_mixture_data_has_the_stated_modes():
    data = toy1d.sample_data(20000, seed=1)
    left, right = toy1d.mode_fractions(data)
    assert abs(left - 1 / 3) < 0.02 and abs(right - 2 / 3) < 0.02
    assert abs(data[data < 0].mean() + 4) < 0.1 and abs(data[data >= 0].mean() - 4) < 0.1


def test_forward_process_ends_near_standard_normal():
    data = toy1d.sample_data(4000, seed=2)
    trajectory = np.asarray(toy1d.forward_trajectory(data, seed=[0, 0]))
    assert trajectory.shape == (toy1d.TIME_STEPS + 1, 4000, 1)
    # x_T = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps with alpha_bar = 0.98**250.
    alpha_bar = (1 - toy1d.BETA) ** toy1d.TIME_STEPS
    expected_mean = np.sqrt(alpha_bar) * data.mean()
    expected_std = np.sqrt(alpha_bar * data.var() + 1 - alpha_bar)
    end = trajectory[-1]
    assert abs(end.mean() - expected_mean) < 0.05
    assert abs(end.std() - expected_std) < 0.05


@pytest.mark.slow
def test_the_1d_model_learns_both_modes_in_1000_steps():
    """The check figure of notebook 03: the fractions of generated samples in
    each mode are within 0.08 of 1/3 and 2/3, and the modes sit near -4 and 4."""
    model, losses = toy1d.train_1d(training_steps=1000, seed=0)
    assert losses[-1] < losses[0]
    samples = model.sample(2000, seed=0)
    left, right = toy1d.mode_fractions(samples)
    print(f"1D model: {left:.3f} left, {right:.3f} right")
    assert abs(left - 1 / 3) < 0.08 and abs(right - 2 / 3) < 0.08
    assert abs(samples[samples < 0].mean() + 4) < 1.0
    assert abs(samples[samples >= 0].mean() - 4) < 1.0
