"""Lesson 02's checks: the reference solutions pass, stubs propagate NotImplementedError, and
plausible wrong answers fail with a hint that points at the mistake."""

import math

import pytest
import torch

from course_lib import schedules
from course_lib.checks import ExerciseError, lesson02


# ---------------------------------------------------------------- reference solutions

def cosine_betas(T, s=0.008, max_beta=0.999):
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal (2021), eq. 17
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta).float()


def cosine_betas_float32(T, s=0.008, max_beta=0.999):
    t = torch.arange(T + 1, dtype=torch.float32)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def rescale(betas):
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()  # float32, as a learner would write it
    sqrt_ab = (sqrt_ab - sqrt_ab[-1]) * sqrt_ab[0] / (sqrt_ab[0] - sqrt_ab[-1])
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def noise_only_steps(betas, threshold=-5.0):
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    return int((torch.log(alpha_bar / (1 - alpha_bar)) < threshold).sum())


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 2.x: stub")


def _fails(check, fn, *words):
    with pytest.raises(ExerciseError) as info:
        check(fn)
    message = str(info.value)
    for word in words:
        assert word in message, f"expected {word!r} in the hint:\n{message}"
    return message


# ---------------------------------------------------------------- 2.1 cosine betas

def test_cosine_reference_passes(capsys):
    lesson02.check_cosine_betas(cosine_betas)
    lesson02.check_cosine_betas(cosine_betas_float32)
    assert "✅ Exercise 2.1 passed" in capsys.readouterr().out


def test_cosine_stub_propagates():
    with pytest.raises(NotImplementedError):
        lesson02.check_cosine_betas(stub)


def test_cosine_without_clip_fails():
    def no_clip(T, s=0.008, max_beta=0.999):
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).float()
    _fails(lesson02.check_cosine_betas, no_clip, "Exercise 2.1", "max_beta")


def test_cosine_off_by_one_fails():
    def off_by_one(T, s=0.008, max_beta=0.999):
        t = torch.arange(T, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return (1 - alpha_bar / prev).clamp(max=max_beta).float()
    _fails(lesson02.check_cosine_betas, off_by_one, "first beta is 0", "off by one")


def test_cosine_unsquared_fails():
    def unsquared(T, s=0.008, max_beta=0.999):
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2)
        return (1 - f[1:] / f[:-1]).clamp(max=max_beta).float()
    _fails(lesson02.check_cosine_betas, unsquared, "square")


def test_cosine_without_s_fails():
    def no_offset(T, s=0.008, max_beta=0.999):
        return cosine_betas(T, s=0.0, max_beta=max_beta)
    _fails(lesson02.check_cosine_betas, no_offset, "alpha_bar implied by your betas", "s = 0.008")


def test_cosine_hard_coded_max_beta_fails():
    def hard_coded(T, s=0.008, max_beta=0.999):
        return cosine_betas(T, s=s)
    _fails(lesson02.check_cosine_betas, hard_coded, "max_beta=0.2")


def test_cosine_wrong_shape_fails():
    _fails(lesson02.check_cosine_betas, lambda T, s=0.008, max_beta=0.999: cosine_betas(T + 1), "shape")


# ---------------------------------------------------------------- 2.2 zero terminal SNR

def test_zero_snr_reference_passes(capsys):
    lesson02.check_zero_terminal_snr(rescale)
    lesson02.check_zero_terminal_snr(schedules.rescale_zero_terminal_snr)
    assert "✅ Exercise 2.2 passed" in capsys.readouterr().out


def test_zero_snr_stub_propagates():
    with pytest.raises(NotImplementedError):
        lesson02.check_zero_terminal_snr(stub)


def test_zero_snr_identity_fails():
    _fails(lesson02.check_zero_terminal_snr, lambda betas: betas.clone(), "expected exactly 0")


def test_zero_snr_shift_without_scale_fails():
    def shift_only(betas):
        sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()
        alpha_bar = (sqrt_ab - sqrt_ab[-1]) ** 2
        return 1 - torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    _fails(lesson02.check_zero_terminal_snr, shift_only, "first step moved", "scale")


def test_zero_snr_rescaling_alpha_bar_not_its_sqrt_fails():
    def no_sqrt(betas):
        ab = torch.cumprod(1 - betas, dim=0)
        ab = (ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])
        return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    _fails(lesson02.check_zero_terminal_snr, no_sqrt, "sqrt(alpha_bar)")


def test_zero_snr_returning_alpha_bar_fails():
    def returns_alpha_bar(betas):
        return torch.cumprod(1 - rescale(betas), dim=0)
    _fails(lesson02.check_zero_terminal_snr, returns_alpha_bar, "not betas")


def test_zero_snr_in_place_fails():
    def in_place(betas):
        out = rescale(betas)
        betas.copy_(out)
        return out
    _fails(lesson02.check_zero_terminal_snr, in_place, "in place")


# ---------------------------------------------------------------- 2.3 steps that are mostly noise

def test_noise_only_steps_reference_passes(capsys):
    lesson02.check_noise_only_steps(noise_only_steps)
    out = capsys.readouterr().out
    assert "✅ Exercise 2.3 passed" in out and "298 steps" in out


def test_noise_only_steps_stub_propagates():
    with pytest.raises(NotImplementedError):
        lesson02.check_noise_only_steps(stub)


def test_noise_only_steps_with_one_step_alpha_fails():
    def one_step_alpha(betas, threshold=-5.0):
        alphas = 1 - betas
        return int((torch.log(alphas / (1 - alphas)) < threshold).sum())
    _fails(lesson02.check_noise_only_steps, one_step_alpha, "cumulative product")


def test_noise_only_steps_complement_fails():
    def above(betas, threshold=-5.0):
        return len(betas) - noise_only_steps(betas, threshold)
    _fails(lesson02.check_noise_only_steps, above, "complement")


def test_noise_only_steps_log10_fails():
    def log10(betas, threshold=-5.0):
        ab = torch.cumprod(1 - betas, dim=0)
        return int((torch.log10(ab / (1 - ab)) < threshold).sum())
    _fails(lesson02.check_noise_only_steps, log10, "log10")


def test_noise_only_steps_halved_log_snr_fails():
    def halved(betas, threshold=-5.0):  # log of the ratio of standard deviations
        ab = torch.cumprod(1 - betas.double(), dim=0)
        return int((torch.log(ab.sqrt() / (1 - ab).sqrt()) < threshold).sum())
    _fails(lesson02.check_noise_only_steps, halved, "ratio of VARIANCES")


def test_noise_only_steps_ignoring_threshold_fails():
    _fails(lesson02.check_noise_only_steps, lambda betas, threshold=-5.0: noise_only_steps(betas), "hard-coded")


def test_noise_only_steps_not_a_number_fails():
    _fails(lesson02.check_noise_only_steps, lambda betas, threshold=-5.0: "many", "whole number")


# ---------------------------------------------------------------- 2.4 widget: smallest T

def test_smallest_T_is_what_the_widget_shows():
    from course_lib import widgets
    truth = lesson02.smallest_T_reaching()
    assert truth == 690
    w = widgets.schedule_explorer(torch.zeros(1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    w.T.value = truth
    assert w.schedule.alpha_bars[-1] < lesson02.THRESHOLD and "9.29e-04" in w.readout.value
    w.T.value = truth - 10
    assert w.schedule.alpha_bars[-1] >= lesson02.THRESHOLD


@pytest.mark.parametrize("answer", [690, 685, 681, 690.0])
def test_smallest_T_accepts_the_grid_value(answer, capsys):
    lesson02.check_smallest_T(answer)
    assert "✅ Exercise 2.4 passed" in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [(680, "too small"), (50, "too small"), (700, "smaller T"),
                                           (1000, "smaller T"), ("690", "number"), (690.5, "whole number"),
                                           (0, "not a number of steps")])
def test_smallest_T_rejects_wrong_answers(answer, words):
    with pytest.raises(ExerciseError) as info:
        lesson02.check_smallest_T(answer)
    assert words in str(info.value)


def test_smallest_T_follows_its_parameters(capsys):
    lesson02.check_smallest_T(460, threshold=1e-2)
    with pytest.raises(ExerciseError):
        lesson02.check_smallest_T(690, threshold=1e-2)
    assert lesson02.smallest_T_reaching(beta_end=0.05) == 280


def test_noise_only_steps_without_log_fails():
    def no_log(betas, threshold=-5.0):
        ab = torch.cumprod(1 - betas, dim=0)
        return int((ab / (1 - ab) < threshold).sum())
    _fails(lesson02.check_noise_only_steps, no_log, "LOG of the signal-to-noise ratio")
