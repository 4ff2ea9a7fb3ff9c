"""Bad input gives a clear ValueError that says what is wrong and what would be right.

The dangerous ones are silent: torch's negative indexing would turn t = -1 into t = T-1, and a
float t would otherwise be truncated or fail deep inside indexing with an unhelpful message.
"""

import pytest
import torch

from course_lib import diffusion, samplers, schedules

T = 50
S = schedules.make_schedule("linear", T)
X = torch.zeros(2, 1, 4, 4)
EPS = torch.zeros(2, 1, 4, 4)


def eps_model(x, t):
    return torch.zeros_like(x)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["quadratic", "Linear", "cos", ""])
def test_unknown_schedule_lists_the_valid_names(name):
    with pytest.raises(ValueError, match="linear") as err:
        schedules.make_schedule(name, 100)
    assert "cosine" in str(err.value) and repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("bad_T", [0, -3, 2.5, True, "100"])
def test_bad_number_of_steps(name, bad_T):
    with pytest.raises(ValueError, match=r"T must be a positive integer.*" + repr(bad_T).replace(".", r"\.")):
        schedules.make_schedule(name, bad_T)


@pytest.mark.parametrize("start,end", [(0.0, 0.02), (0.02, 1e-4), (1e-4, 1.0), (-1e-4, 0.02)])
def test_bad_linear_range(start, end):
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        schedules.make_schedule("linear", 100, beta_start=start, beta_end=end)


# ----------------------------------------------------------------------------- timesteps out of range


def calls_with_t(t):
    """Every public function that takes a timestep, called with ``t``."""
    return {
        "q_sample": lambda: diffusion.q_sample(X, t, S, noise=EPS),
        "q_posterior": lambda: diffusion.q_posterior(X, X, t, S),
        "predict_x0": lambda: diffusion.predict_x0(X, EPS, t, S),
        "score_from_eps": lambda: diffusion.score_from_eps(EPS, t, S),
        "ddpm_step": lambda: samplers.ddpm_step(X, EPS, t, t - 1, S, noise=EPS),
        "ddim_step": lambda: samplers.ddim_step(X, EPS, t, -1, S),
    }


FUNCTIONS = list(calls_with_t(0))
BATCHED = [f for f in FUNCTIONS if not f.endswith("_step")]  # the steps take one t for the batch


def cases(scalars, tensors):
    return ([pytest.param(f, t, id=f"{f}-{t!r}") for f in FUNCTIONS for t in scalars]
            + [pytest.param(f, t, id=f"{f}-{t.tolist()}") for f in BATCHED for t in tensors])


@pytest.mark.parametrize("fn,t", cases([-1, T, T + 7], [torch.tensor([3, -1]), torch.tensor([0, T])]))
def test_timestep_out_of_range(fn, t):
    bad = t if isinstance(t, int) else [v for v in t.tolist() if not 0 <= v < T][0]
    with pytest.raises(ValueError, match=rf"timestep {bad} is out of range: valid timesteps are 0\.\.{T - 1}"):
        calls_with_t(t)[fn]()


@pytest.mark.parametrize("fn,t", cases([2.5, 3.0], [torch.tensor([1.0, 2.0])]))
def test_float_timestep(fn, t):
    with pytest.raises(ValueError, match="timesteps must be integers"):
        calls_with_t(t)[fn]()


def test_timestep_count_must_match_the_batch():
    with pytest.raises(ValueError, match="3 timesteps for a batch of 2"):
        diffusion.q_sample(X, torch.tensor([1, 2, 3]), S, noise=EPS)


def test_valid_edges_are_accepted():
    """t = 0 and t = T-1 are fine everywhere (the checks must not be off by one)."""
    for t in (0, T - 1):
        for call in calls_with_t(t).values():
            call()


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(2, 1, 4), (1, 1, 4, 4), (2, 1, 4, 5)])
def test_noise_of_another_shape(shape):
    noise = torch.zeros(shape)
    msg = r"noise has shape \(" + ", ".join(map(str, shape)) + r"\) but must match"
    with pytest.raises(ValueError, match=msg):
        diffusion.q_sample(X, 3, S, noise=noise)
    with pytest.raises(ValueError, match=msg):
        samplers.ddpm_step(X, EPS, 3, 2, S, noise=noise)
    with pytest.raises(ValueError, match=msg):
        samplers.ddim_step(X, EPS, 3, 1, S, eta=0.5, noise=noise)


def test_mismatched_prediction_shapes():
    with pytest.raises(ValueError, match=r"x_t has shape \(2, 1, 4, 4\) but eps has \(2, 1, 4\)"):
        diffusion.predict_x0(X, torch.zeros(2, 1, 4), 3, S)
    with pytest.raises(ValueError, match="x0 has shape"):
        diffusion.q_posterior(torch.zeros(3, 1, 4, 4), X, 3, S)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_x_T_of_the_wrong_shape(sampler):
    x_T = torch.zeros(3, 1, 4, 4)
    fn = samplers.ddim_sample if sampler == "ddim" else samplers.ddpm_sample
    with pytest.raises(ValueError, match=r"x_T has shape \(3, 1, 4, 4\) but shape=\(2, 1, 4, 4\)"):
        fn(eps_model, (2, 1, 4, 4), S, x_T=x_T)


# ----------------------------------------------------------------------------- DDIM settings


@pytest.mark.parametrize("steps", [0, -1, T + 1, 2.0, True])
def test_bad_number_of_sampling_steps(steps):
    with pytest.raises(ValueError, match=rf"steps must be an integer in 1\.\.T = 1\.\.{T}, got {steps!r}"):
        samplers.ddim_timesteps(T, steps)
    calls = []
    with pytest.raises(ValueError, match="steps must be an integer"):
        samplers.ddim_sample(lambda x, t: calls.append(1) or x, (2, 3), S, steps=steps)
    assert not calls  # refused before any model call


@pytest.mark.parametrize("spacing", ["uniform", "Leading", "quadratic"])
def test_unknown_spacing(spacing):
    with pytest.raises(ValueError, match=r"unknown spacing.*leading, trailing, linspace"):
        samplers.ddim_timesteps(T, 10, spacing)
    with pytest.raises(ValueError, match=repr(spacing)):
        samplers.ddim_sample(eps_model, (2, 3), S, steps=10, spacing=spacing)


@pytest.mark.parametrize("t,t_prev", [(10, 10), (10, 11), (0, 0), (5, T), (10, -2)])
def test_t_prev_must_be_before_t(t, t_prev):
    with pytest.raises(ValueError, match=rf"t_prev must satisfy -1 <= t_prev < t = {t}, got {t_prev}"):
        samplers.ddim_step(X, EPS, t, t_prev, S)
    with pytest.raises(ValueError, match="t_prev must satisfy"):
        samplers.ddpm_step(X, EPS, t, t_prev, S, noise=EPS)


@pytest.mark.parametrize("eta", [-0.1, -1, 1.5, float("nan"), float("inf")])
def test_eta_outside_0_1(eta):
    """eta > 1 made the middle coefficient sqrt(negative) = NaN silently; NaN itself slipped through."""
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        samplers.ddim_step(X, EPS, 10, 5, S, eta=eta)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        samplers.ddim_sample(eps_model, (2, 3), S, steps=5, eta=eta)
