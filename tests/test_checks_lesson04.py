"""Lesson 04 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError with a useful message."""

import math

import pytest
import torch

from course_lib import samplers
from course_lib.checks import ExerciseError, lesson04
from course_lib.schedules import at, make_schedule


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 4.x: stub")


# ---------------------------------------------------------------------------------------- 4.1

def _alpha_bar(schedule, t):
    return torch.tensor(1.0, dtype=torch.float64) if t < 0 else schedule.alpha_bars[t].double()


def good_ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None):
    ab, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    x0_hat = (x_t - (1 - ab).sqrt().float() * eps) / ab.sqrt().float()
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    x_prev = ab_prev.sqrt().float() * x0_hat + (1 - ab_prev - sigma**2).sqrt().float() * eps
    if eta > 0:
        x_prev = x_prev + sigma.float() * (noise if noise is not None else torch.randn_like(x_t))
    return x_prev


def ddim_step_alphas(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None):
    """alpha_t instead of alpha_bar_t."""
    a = schedule.alphas.double()
    ab, ab_prev = a[t], (a[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
    x0_hat = (x_t - (1 - ab).sqrt().float() * eps) / ab.sqrt().float()
    return ab_prev.sqrt().float() * x0_hat + (1 - ab_prev).sqrt().float() * eps


def ddim_step_wraps(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None):
    """alpha_bars[-1] for the final step: Python wraps to the noisiest entry."""
    ab, ab_prev = schedule.alpha_bars[t].double(), schedule.alpha_bars[t_prev].double()
    x0_hat = (x_t - (1 - ab).sqrt().float() * eps) / ab.sqrt().float()
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    out = ab_prev.sqrt().float() * x0_hat + (1 - ab_prev - sigma**2).sqrt().float() * eps
    return out + sigma.float() * noise if eta > 0 else out


def ddim_step_keeps_direction(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None):
    """Adds sigma z but forgets to shrink the direction term to sqrt(1 - alpha_bar_prev - sigma^2)."""
    ab, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    x0_hat = (x_t - (1 - ab).sqrt().float() * eps) / ab.sqrt().float()
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    out = ab_prev.sqrt().float() * x0_hat + (1 - ab_prev).sqrt().float() * eps
    return out + sigma.float() * noise if eta > 0 else out


def ddim_step_always_noisy(x_t, eps, t, t_prev, schedule, eta=0.0, noise=None):
    """Adds noise with the DDPM variance whatever eta says."""
    return good_ddim_step(x_t, eps, t, t_prev, schedule, eta=1.0, noise=noise)


def test_ddim_step_reference_passes(capsys):
    lesson04.check_ddim_step(good_ddim_step)
    lesson04.check_ddim_step(lambda x, e, t, tp, s, eta=0.0, noise=None: samplers.ddim_step(x, e, t, tp, s, eta=eta, noise=noise))
    assert "Exercise 4.1 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 4.2

def good_timesteps(T, steps, spacing):
    if spacing == "leading":
        ts = torch.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = torch.round(T - torch.arange(steps, dtype=torch.float64) * T / steps).long() - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return ts.long().sort(descending=True).values


def timesteps_no_value_error(T, steps, spacing):
    if spacing == "leading":
        return good_timesteps(T, steps, spacing)
    return good_timesteps(T, steps, "trailing")  # anything else falls through to trailing


def timesteps_ascending(T, steps, spacing):
    return good_timesteps(T, steps, spacing).flip(0)


def timesteps_trailing_no_minus_one(T, steps, spacing):
    if spacing == "leading":
        return good_timesteps(T, steps, spacing)
    return torch.round(T - torch.arange(steps, dtype=torch.float64) * T / steps).long()


def timesteps_trailing_int_stride(T, steps, spacing):
    if spacing == "leading":
        return good_timesteps(T, steps, spacing)
    return T - 1 - torch.arange(steps) * (T // steps)


def test_timesteps_reference_passes(capsys):
    lesson04.check_ddim_timesteps(good_timesteps)
    assert "Exercise 4.2 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 4.3

def good_slerp(z0, z1, alpha):
    theta = torch.arccos((z0.flatten() @ z1.flatten() / (z0.norm() * z1.norm())).clamp(-1, 1))
    if torch.sin(theta) < 1e-6:
        return (1 - alpha) * z0 + alpha * z1
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


def slerp_no_clamp(z0, z1, alpha):
    theta = torch.arccos(z0.flatten() @ z1.flatten() / (z0.norm() * z1.norm()))
    if torch.sin(theta) < 1e-6:
        return (1 - alpha) * z0 + alpha * z1
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


def slerp_no_fallback(z0, z1, alpha):
    theta = torch.arccos((z0.flatten() @ z1.flatten() / (z0.norm() * z1.norm())).clamp(-1, 1))
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


def lerp(z0, z1, alpha):
    return (1 - alpha) * z0 + alpha * z1


def slerp_unnormalised(z0, z1, alpha):
    theta = torch.arccos(z0.flatten() @ z1.flatten())  # forgets to divide by the norms
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


def slerp_per_row(z0, z1, alpha):
    """Angle per batch row instead of over the whole tensor: fine for one vector, not for a batch."""
    if z0.ndim == 1:
        return good_slerp(z0, z1, alpha)
    return torch.stack([good_slerp(a, b, alpha) for a, b in zip(z0, z1)])


def test_slerp_reference_passes(capsys):
    lesson04.check_slerp(good_slerp)
    assert "Exercise 4.3 passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- 4.4

def encode_with_next_t(model, x0, schedule, steps):
    """eps evaluated at the next, larger t: a noise level x has not reached yet (the exercise asks for the current t)."""
    ab, x, t = schedule.alpha_bars.double(), x0, -1
    for t_next in samplers.ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist():
        eps = model(x, torch.full((x.shape[0],), t_next))
        a = ab[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0_hat = (x - (1 - a).sqrt().float() * eps) / a.sqrt().float()
        x, t = ab[t_next].sqrt().float() * x0_hat + (1 - ab[t_next]).sqrt().float() * eps, t_next
    return x


def encode_identity(model, x0, schedule, steps):
    return x0.clone()


def encode_random(model, x0, schedule, steps):
    """Noising with fresh noise (q_sample) instead of the deterministic ODE."""
    t = int(samplers.ddim_timesteps(schedule.T, steps)[0])
    ab = schedule.alpha_bars[t]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn_like(x0)


def encode_without_x0_hat(model, x0, schedule, steps):
    """Rescales x itself instead of the predicted x_0."""
    ab, x, t = schedule.alpha_bars.double(), x0, -1
    for t_next in samplers.ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist():
        eps = model(x, torch.full((x.shape[0],), max(t, 0)))
        x, t = ab[t_next].sqrt().float() * x + (1 - ab[t_next]).sqrt().float() * eps, t_next
    return x


def good_encode(model, x0, schedule, steps):
    """The solution notebook's answer: the timesteps made on x's device, the schedule's numbers as 0-dim tensors."""
    ab, x, t = schedule.alpha_bars.double(), x0, -1
    for t_next in samplers.ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist():
        eps = model(x, torch.full((x.shape[0],), max(t, 0), dtype=torch.long, device=x.device))
        a = ab[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0_hat = (x - (1 - a).sqrt().float() * eps) / a.sqrt().float()
        x, t = ab[t_next].sqrt().float() * x0_hat + (1 - ab[t_next]).sqrt().float() * eps, t_next
    return x


def encode_with_at(model, x0, schedule, steps):
    """Per-sample alpha_bar through schedules.at with the timesteps on x's device: right, but at() reads t's values
    (its range check), which meta tensors do not have; the device probe must then stay silent."""
    x, t = x0, -1
    for t_next in samplers.ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist():
        t_vec = torch.full((x.shape[0],), max(t, 0), dtype=torch.long, device=x.device)
        eps = model(x, t_vec)
        a = at(schedule.alpha_bars, t_vec, x) if t >= 0 else torch.ones((), device=x.device)
        a_next = at(schedule.alpha_bars, torch.full_like(t_vec, t_next), x)
        x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x, t = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps, t_next
    return x


def encode_cpu_timesteps(model, x0, schedule, steps):
    """Right on the CPU, but torch.full without device=: CPU timesteps for a U-Net on the GPU."""
    ab, x, t = schedule.alpha_bars.double(), x0, -1
    for t_next in samplers.ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist():
        eps = model(x, torch.full((x.shape[0],), max(t, 0), dtype=torch.long))
        a = ab[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0_hat = (x - (1 - a).sqrt().float() * eps) / a.sqrt().float()
        x, t = ab[t_next].sqrt().float() * x0_hat + (1 - ab[t_next]).sqrt().float() * eps, t_next
    return x


def encode_cpu_alpha_bar(model, x0, schedule, steps):
    """Right on the CPU, timesteps on x's device, but a (B, 1, 1, 1) alpha_bar built on the CPU: on a GPU that
    product raises (a 0-dim CPU tensor would be fine)."""
    x, t = x0, -1
    for t_next in samplers.ddim_timesteps(schedule.T, steps, "leading").flip(0).tolist():
        eps = model(x, torch.full((x.shape[0],), max(t, 0), dtype=torch.long, device=x.device))
        a = schedule.alpha_bars[torch.full((x.shape[0],), t)].view(-1, 1, 1, 1) if t >= 0 else torch.ones(())
        a_next = schedule.alpha_bars[torch.full((x.shape[0],), t_next)].view(-1, 1, 1, 1)  # (B, 1, 1, 1), CPU
        x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x, t = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps, t_next
    return x


def test_encode_reference_passes(capsys):
    lesson04.check_ddim_encode(lambda m, x0, s, steps: samplers.ddim_encode(m, x0, s, steps=steps))
    lesson04.check_ddim_encode(good_encode)
    lesson04.check_ddim_encode(encode_with_at)
    assert capsys.readouterr().out.count("Exercise 4.4 passed") == 3


@pytest.mark.parametrize("wrong, words", [
    (encode_cpu_timesteps, "called the model with x on meta but t on cpu"),
    (encode_cpu_alpha_bar, "your encoder raised"),
])
def test_encode_on_the_cpu_only_fails_with_the_device_hint(wrong, words):
    """The device probe: right numbers on the CPU, but a tensor made on the CPU, which the GPU notebook trips over."""
    with pytest.raises(ExerciseError) as info:
        lesson04.check_ddim_encode(wrong)
    message = str(info.value)
    assert "4.4" in message and words in message
    assert "created" in message and "on the CPU" in message and "device=x.device" in message


# ---------------------------------------------------------------------------------------- 4.1-4.4: wrong answers, stubs

@pytest.mark.parametrize("check, ex, wrong, words", [
    (lesson04.check_ddim_step, "4.1", ddim_step_alphas, "alpha_bars"),
    (lesson04.check_ddim_step, "4.1", ddim_step_wraps, "t_prev = -1"),
    (lesson04.check_ddim_step, "4.1", ddim_step_keeps_direction, "sqrt(1 - alpha_bar_prev - sigma^2)"),
    (lesson04.check_ddim_step, "4.1", ddim_step_always_noisy, "eta = 0"),
    (lesson04.check_ddim_timesteps, "4.2", timesteps_ascending, "increasing order"),
    (lesson04.check_ddim_timesteps, "4.2", timesteps_trailing_no_minus_one, "T - 1"),
    (lesson04.check_ddim_timesteps, "4.2", timesteps_trailing_int_stride, "T / steps"),
    (lesson04.check_slerp, "4.3", lerp, "straight line"),
    (lesson04.check_slerp, "4.3", slerp_unnormalised, "NaN"),
    (lesson04.check_slerp, "4.3", slerp_per_row, "ALL entries"),
    (lesson04.check_slerp, "4.3", slerp_no_clamp, "clamp the cosine"),
    (lesson04.check_slerp, "4.3", slerp_no_fallback, "straight line (1 - alpha) z0 + alpha z1 instead"),
    (lesson04.check_ddim_timesteps, "4.2", timesteps_no_value_error, "ValueError"),
    (lesson04.check_ddim_encode, "4.4", encode_with_next_t, "NEXT timestep"),
    (lesson04.check_ddim_encode, "4.4", encode_identity, "unchanged"),
    (lesson04.check_ddim_encode, "4.4", encode_random, "different encodings"),
    (lesson04.check_ddim_encode, "4.4", encode_without_x0_hat, "x0_hat"),
])
def test_wrong_implementation_fails(check, ex, wrong, words):
    with pytest.raises(ExerciseError) as info:
        check(wrong)
    assert ex in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("check", [lesson04.check_ddim_step, lesson04.check_ddim_timesteps, lesson04.check_slerp,
                                   lesson04.check_ddim_encode])
def test_stub_propagates(check):
    with pytest.raises(NotImplementedError):
        check(_stub)


# ---------------------------------------------------------------------------------------- 4.5

def _toy_setup():
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(5)
    model = lesson04.gaussian_eps_model(schedule, 0.6 * torch.tanh(torch.randn((1, 1, 6, 6), generator=g)), 0.3)
    return model, schedule, torch.randn((4, 1, 6, 6), generator=g)


def _smallest(model, schedule, x_T, threshold, reference_steps=200):
    reference = samplers.ddim_sample(model, x_T.shape, schedule, steps=reference_steps, x_T=x_T, clip_x0=True)
    return next(k for k in range(1, reference_steps + 1)
                if lesson04.sample_change(model, schedule, x_T, k, reference) < threshold)


def test_converged_steps_true_answer_passes(capsys):
    model, schedule, x_T = _toy_setup()
    answer = _smallest(model, schedule, x_T, 0.05)
    assert 3 < answer < 100
    lesson04.check_converged_steps(answer, model, schedule, x_T, threshold=0.05)
    for slack in range(1, lesson04.SLACK + 1):  # a notch or two off is fine
        lesson04.check_converged_steps(answer + slack, model, schedule, x_T, threshold=0.05)
    assert "Exercise 4.5 passed" in capsys.readouterr().out


def test_converged_steps_rejects_answers_well_above_the_smallest():
    """The review found 22 accepted where 15 was right: more than SLACK above the smallest must fail."""
    model, schedule, x_T = _toy_setup()
    answer = _smallest(model, schedule, x_T, 0.05)
    with pytest.raises(ExerciseError, match="SMALLEST"):
        lesson04.check_converged_steps(answer + lesson04.SLACK + 1, model, schedule, x_T, threshold=0.05)


@pytest.mark.parametrize("answer, words", [(1, "still differ"), (200, "SMALLEST"), (30.0, "whole number"),
                                           (0, "outside"), (None, "whole number")])
def test_converged_steps_wrong_fails(answer, words):
    model, schedule, x_T = _toy_setup()
    with pytest.raises(ExerciseError) as info:
        lesson04.check_converged_steps(answer, model, schedule, x_T, threshold=0.05)
    assert "4.5" in str(info.value) and words in str(info.value)


def test_gaussian_toy_model_is_the_exact_posterior_mean():
    """E[eps | x_t] by Monte Carlo in one dimension matches the closed form of gaussian_eps_model."""
    schedule = make_schedule("linear", 1000)
    model = lesson04.gaussian_eps_model(schedule, torch.tensor(0.5), 0.3)
    g = torch.Generator().manual_seed(0)
    t = 300
    ab = schedule.alpha_bars[t]
    x0 = 0.5 + 0.3 * torch.randn(400_000, generator=g)
    eps = torch.randn(400_000, generator=g)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    # regression of eps on x_t is linear for jointly Gaussian variables: compare the slope
    slope = ((eps * (x_t - x_t.mean())).mean() / x_t.var()).item()
    pred = model(torch.tensor([[1.0], [0.0]]), t)
    assert math.isclose((pred[0] - pred[1]).item(), slope, rel_tol=0.02)
