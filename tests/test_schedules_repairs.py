"""Repairs to course_lib.schedules from issue 13: T = 1 with zero terminal SNR (item 3), SNR from the
float64 product (item 5), the 1000/T rescaling and the warning for schedules that never reach noise
(item 18)."""

import math
import warnings

import numpy as np
import pytest
import torch

from course_lib import schedules


def reference_alpha_bars(betas):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), in numpy float64 (Ho et al., 2020, eq. 4)."""
    return np.cumprod(1.0 - betas.double().numpy())


# ----------------------------------------------------------------------------- item 3


def test_zero_terminal_snr_with_T_1_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"T >= 2.*T = 1"):
        schedules.make_schedule("linear", 1, zero_terminal_snr=True)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_zero_terminal_snr_with_T_2_is_finite(name):
    s = schedules.make_schedule(name, 2, zero_terminal_snr=True)
    assert torch.isfinite(s.betas).all()
    assert s.alpha_bars[-1] == 0 and s.log_snr[-1] == -math.inf and torch.isfinite(s.log_snr[0])


# ----------------------------------------------------------------------------- item 5


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_snr_and_log_snr_match_a_float64_reference(name):
    """Was 1.7e-4 relative error at t = 0 (SNR from alpha_bar rounded to float32 first)."""
    s = schedules.make_schedule(name, 1000)
    ab = reference_alpha_bars(s.betas)[:-1]  # the cosine schedule's last alpha_bar is ~0: compared below
    snr = ab / (1 - ab)
    np.testing.assert_allclose(s.snr.numpy()[:-1], snr, rtol=2e-7)
    np.testing.assert_allclose(s.log_snr.numpy()[:-1], np.log(snr), rtol=1e-6, atol=1e-6)
    assert abs(s.snr[0].item() / snr[0] - 1) < 1e-6


def test_log_snr_is_minus_infinity_only_at_a_zero_terminal_step():
    s = schedules.make_schedule("linear", 1000, zero_terminal_snr=True)
    assert s.log_snr[-1] == -math.inf and torch.isfinite(s.log_snr[:-1]).all()


# ----------------------------------------------------------------------------- item 18


@pytest.mark.parametrize("T", [50, 200, 1000, 4000])
def test_scale_to_T_is_improved_diffusions_rescaling(T):
    """improved-diffusion, get_named_beta_schedule("linear", T): scale = 1000 / T on both ends."""
    scale = 1000 / T
    expected = np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    np.testing.assert_allclose(schedules.linear_betas(T, scale_to_T=True).numpy(), expected, rtol=1e-6)
    s = schedules.make_schedule("linear", T, scale_to_T=True)
    assert s.alpha_bars[-1] < 1e-3  # reaches noise at every T, as at T = 1000 (4.0e-5)


def test_scale_to_T_leaves_T_1000_unchanged():
    torch.testing.assert_close(schedules.linear_betas(1000, scale_to_T=True), schedules.linear_betas(1000))


def test_scale_to_T_that_pushes_beta_past_1_is_refused():
    with pytest.raises(ValueError, match=r"T > 20"):
        schedules.linear_betas(20, scale_to_T=True)


def test_scale_to_T_is_for_the_linear_schedule_only():
    with pytest.raises(ValueError, match="linear schedule only"):
        schedules.make_schedule("cosine", 100, scale_to_T=True)


def test_check_reaches_noise_warns_with_the_terminal_alpha_bar_and_what_to_do():
    with pytest.warns(UserWarning, match=r"T = 200 ends at alpha_bar_\(T-1\) = 0\.13\d* > 0\.01.*36%.*scale_to_T=True"):
        assert schedules.check_reaches_noise(schedules.make_schedule("linear", 200)) is False


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_shipped_schedules_reach_noise_quietly(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert schedules.check_reaches_noise(schedules.make_schedule(name, 1000)) is True


def test_building_a_flawed_schedule_does_not_warn():
    """Lesson 02 builds linear T = 10..200 on purpose to show the flaw: no warning spam there."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for T in (10, 50, 100, 200):
            schedules.make_schedule("linear", T)
