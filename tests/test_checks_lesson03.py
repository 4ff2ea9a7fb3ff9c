"""Lesson 03 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError with a useful message."""

import pytest
import torch
import torch.nn.functional as F

from course_lib import diffusion
from course_lib.checks import ExerciseError, lesson03
from course_lib.schedules import at


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 3.x: stub")


# ---------------------------------------------------------------------------------------- 3.1

def _posterior(x0, x_t, t, schedule, prev="right", variance="tilde", sqrt_alpha=True, swap=False):
    if swap:
        x0, x_t = x_t, x0
    alpha_bars = schedule.alpha_bars
    if prev == "right":
        alpha_bar_prev = at(torch.cat([torch.ones(1), alpha_bars[:-1]]), t, x_t)
    elif prev == "wraps":  # alpha_bars[t - 1] with Python's negative indexing at t = 0
        alpha_bar_prev = alpha_bars[t - 1].reshape(-1, 1, 1, 1)
    else:  # alpha_bar_t in place of alpha_bar_{t-1}
        alpha_bar_prev = at(alpha_bars, t, x_t)
    alpha_bar, beta = at(alpha_bars, t, x_t), at(schedule.betas, t, x_t)
    alpha = at(schedule.alphas, t, x_t)
    mean = (alpha_bar_prev.sqrt() * beta * x0 + (alpha.sqrt() if sqrt_alpha else alpha) * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    var = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta if variance == "tilde" else beta
    return mean, var


def test_posterior_reference_passes(capsys):
    lesson03.check_posterior(_posterior)
    lesson03.check_posterior(diffusion.q_posterior)
    assert "✅ Exercise 3.1 passed" in capsys.readouterr().out


def test_posterior_stub_propagates():
    with pytest.raises(NotImplementedError):
        lesson03.check_posterior(_stub)


@pytest.mark.parametrize("kwargs, message", [
    ({"prev": "wraps"}, "at t = 0 the variance should be 0"),
    ({"prev": "current"}, "where eq. 7 has alpha_bar_"),
    ({"variance": "large"}, "fixed large"),
    ({"sqrt_alpha": False}, "posterior mean is off"),
    ({"swap": True}, "x_0 and x_t swapped"),
])
def test_posterior_wrong(kwargs, message):
    with pytest.raises(ExerciseError, match=message):
        lesson03.check_posterior(lambda *a: _posterior(*a, **kwargs))


def test_posterior_wrong_return_type():
    with pytest.raises(ExerciseError, match="pair"):
        lesson03.check_posterior(lambda x0, x_t, t, s: diffusion.q_posterior(x0, x_t, t, s)[0])


# ---------------------------------------------------------------------------------------- 3.2

def _loss(model, x0, t, eps, schedule):
    x_t = diffusion.q_sample(x0, t, schedule, noise=eps)
    return F.mse_loss(model(x_t, t), eps)


def test_loss_reference_passes(capsys):
    lesson03.check_simple_loss(_loss)
    assert "✅ Exercise 3.2 passed" in capsys.readouterr().out


def test_loss_stub_propagates():
    with pytest.raises(NotImplementedError):
        lesson03.check_simple_loss(_stub)


def _x_t_with_alphas(x0, t, eps, s):
    alpha = at(s.alphas, t, x0)
    return alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps


@pytest.mark.parametrize("wrong, message", [
    (lambda m, x0, t, eps, s: F.mse_loss(m(diffusion.q_sample(x0, t, s, noise=eps), t), x0), "compares the prediction with x_0"),
    (lambda m, x0, t, eps, s: F.mse_loss(m(x0, t), eps), "clean x_0"),
    (lambda m, x0, t, eps, s: ((m(diffusion.q_sample(x0, t, s, noise=eps), t) - eps) ** 2).sum(), "sum"),
    (lambda m, x0, t, eps, s: F.mse_loss(m(diffusion.q_sample(x0, t, s, noise=eps), (t + 1).clamp(max=999)), eps), "t \\+ 1"),
    (lambda m, x0, t, eps, s: F.mse_loss(m(_x_t_with_alphas(x0, t, eps, s), t), eps), "expected"),
    (lambda m, x0, t, eps, s: F.mse_loss(m(diffusion.q_sample(x0, t, s, noise=eps), t), eps).item(), "torch.Tensor"),
    (lambda m, x0, t, eps, s: F.mse_loss(m(diffusion.q_sample(x0, t, s, noise=eps), t), eps, reduction="none"), "scalar"),
    (lambda m, x0, t, eps, s: F.mse_loss(m(diffusion.q_sample(x0, t, s, noise=eps), t), eps).detach(), "gradient"),
])
def test_loss_wrong(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        lesson03.check_simple_loss(wrong)


# ---------------------------------------------------------------------------------------- 3.3

def _step(x_t, eps, t, schedule, z, alpha_kind="alpha", sigma="tilde", noise_at_0=False, no_sqrt=None):
    beta = schedule.betas[t]
    alpha = 1 - beta if alpha_kind == "alpha" else schedule.alpha_bars[t]
    alpha_bar = schedule.alpha_bars[t]
    alpha_bar_prev = schedule.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0)
    root = (lambda v: v) if no_sqrt else torch.sqrt
    mean = (x_t - beta / (root if no_sqrt == "1-alpha_bar" else torch.sqrt)(1 - alpha_bar) * eps) \
        / (root if no_sqrt == "alpha" else torch.sqrt)(alpha)
    var = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta if sigma == "tilde" else beta
    if t == 0 and not noise_at_0:
        return mean
    if sigma == "none":
        return mean
    return mean + (root if no_sqrt == "variance" else torch.sqrt)(var) * z


def test_step_reference_passes(capsys):
    lesson03.check_ddpm_step(_step)
    assert "✅ Exercise 3.3 passed" in capsys.readouterr().out


def test_step_stub_propagates():
    with pytest.raises(NotImplementedError):
        lesson03.check_ddpm_step(_stub)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha_kind": "alpha_bar"}, "Algorithm 2"),
    ({"sigma": "large"}, "fixed large"),
    ({"sigma": "large", "noise_at_0": True}, "adds"),
    ({"sigma": "none"}, "adds no noise"),
    ({"no_sqrt": "1-alpha_bar"}, "missing a square root: sqrt\\(1 - alpha_bar_t\\)"),
    ({"no_sqrt": "alpha"}, "missing a square root: sqrt\\(alpha_t\\)"),
    ({"no_sqrt": "variance"}, "missing a square root: sqrt of the variance"),
])
def test_step_wrong(kwargs, message):
    with pytest.raises(ExerciseError, match=message):
        lesson03.check_ddpm_step(lambda *a: _step(*a, **kwargs))


# ---------------------------------------------------------------------------------------- 3.4

TIMESTEPS = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, -1]
LABELS = [1, 7, 4, 9, 4, 4, 4, 4, 4, 4, 4]  # settles on 4 at t = 599 (the 9 at 699 is the last change)


def test_commit_timestep():
    assert lesson03.commit_timestep(TIMESTEPS, LABELS) == 599
    assert lesson03.commit_timestep(TIMESTEPS, [3] * 11) == 999
    assert lesson03.commit_timestep(TIMESTEPS, [3] * 10 + [5]) == -1


def test_commit_reference_passes(capsys):
    for answer in (599, 699, 499, 399, 799):  # within two recorded states
        lesson03.check_commit_timestep(answer, TIMESTEPS, LABELS)
    assert "✅ Exercise 3.4 passed" in capsys.readouterr().out


def test_commit_stub_propagates():
    def notebook_cell():
        raise NotImplementedError("Exercise 3.4: stub")

    with pytest.raises(NotImplementedError):
        lesson03.check_commit_timestep(notebook_cell(), TIMESTEPS, LABELS)


@pytest.mark.parametrize("answer, message", [
    (99, "already is"),           # too late: the reading was final long before
    (999, "still changes"),       # too early: the reading changes after it
    (600, "not one of the recorded"),
    (599.0, "whole timestep"),
    (None, "whole timestep"),
])
def test_commit_wrong(answer, message):
    with pytest.raises(ExerciseError, match=message):
        lesson03.check_commit_timestep(answer, TIMESTEPS, LABELS)
