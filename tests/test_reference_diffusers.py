"""Our schedules and sampler steps against diffusers 0.42.1, the numerical reference of the course.

diffusers is a test-only dependency. Tolerances are float32 precision: diffusers accumulates
alpha_bar in float32, we accumulate in float64 and round once, so the two differ by a few ulps.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler  # a test dependency: fail loudly if missing
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as hf_rescale

from course_lib import samplers, schedules

HF_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SPACINGS = ("leading", "trailing", "linspace")


def hf_kwargs(name, T, **extra):
    return dict(num_train_timesteps=T, beta_schedule=HF_NAMES[name], beta_start=1e-4, beta_end=0.02, **extra)


def ddim_ref(name, T, steps, spacing="leading", clip=False, float64=False):
    sched = DDIMScheduler(**hf_kwargs(name, T, set_alpha_to_one=True, clip_sample=clip,
                                      timestep_spacing=spacing, prediction_type="epsilon"))
    sched.set_timesteps(steps)
    if float64:
        sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), dim=0)
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def ddpm_ref(name, T, clip=False, float64=False):
    """diffusers' DDPMScheduler; ``float64=True`` makes it do its scalar arithmetic in float64.

    As shipped, diffusers computes beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} and 1 - alpha_bar in
    float32, which cancels catastrophically near t = 0 (beta ~ 1e-4 from two numbers ~ 1): its
    posterior mean is then off by up to ~3e-4 from the exact value, while ours stays within ~1e-5.
    With float64 alphas_cumprod the very same diffusers code is exact to float32 precision.
    """
    sched = DDPMScheduler(**hf_kwargs(name, T, variance_type="fixed_small", clip_sample=clip,
                                      prediction_type="epsilon"))
    if float64:
        sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), dim=0)
        sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def ddpm_atol(t):
    """Tolerance against diffusers *as shipped*: see :func:`ddpm_ref` for the small-t float32 error."""
    return 1e-5 if t >= 100 else 1e-3


def toy_inputs(seed=0, shape=(3, 2, 5, 5), scale=1.5):
    """An x_t and an eps with values large enough that clipping x0_hat to [-1, 1] matters."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 50])
def test_betas_and_alpha_bars_match_diffusers(name, T):
    ours = schedules.make_schedule(name, T)
    for ref in (DDPMScheduler(**hf_kwargs(name, T)), DDIMScheduler(**hf_kwargs(name, T))):
        torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ours.alphas, ref.alphas, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ours.alpha_bars, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert ours.betas.dtype == torch.float32 and ours.alpha_bars.dtype == torch.float32


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 50])
def test_zero_terminal_snr_matches_diffusers(name, T):
    ours = schedules.make_schedule(name, T, zero_terminal_snr=True)
    # diffusers' DDPM and DDIM schedulers apply the rescaling to the betas and keep
    # alphas_cumprod[-1] exactly 0 (only its Euler scheduler clamps it to 2**-24); ours too.
    for ref in (DDPMScheduler(**hf_kwargs(name, T, rescale_betas_zero_snr=True)),
                DDIMScheduler(**hf_kwargs(name, T, rescale_betas_zero_snr=True))):
        assert ref.alphas_cumprod[-1] == 0
        # diffusers rescales in float32 (cancellation near the end), we in float64: a few 1e-7 apart
        torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-5, atol=5e-6)
        torch.testing.assert_close(ours.alpha_bars, ref.alphas_cumprod, rtol=1e-5, atol=1e-6)
    assert ours.alpha_bars[-1] == 0 and ours.betas[-1] == 1
    assert ours.snr[-1] == 0 and torch.isneginf(ours.log_snr[-1])
    # the first step keeps its alpha_bar (Lin et al., 2024, Algorithm 1)
    plain = schedules.make_schedule(name, T)
    torch.testing.assert_close(ours.alpha_bars[0], plain.alpha_bars[0], rtol=1e-6, atol=0)
    # the very same algorithm as diffusers' function, when both run in float64
    ref64 = hf_rescale(plain.betas.double())
    torch.testing.assert_close(ours.betas.double(), ref64, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("T,steps", [(1000, 50), (1000, 7), (1000, 1), (1000, 1000), (1000, 333),
                                     (50, 50), (50, 10), (50, 3), (100, 30), (17, 4)])
def test_ddim_timesteps_match_diffusers(spacing, T, steps):
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ours = samplers.ddim_timesteps(T, steps, spacing)
    assert ours.dtype == torch.long
    assert ours.tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("T,steps", [(1000, 50), (1000, 7), (50, 3)])
def test_strided_ddpm_timesteps_match_diffusers(T, steps):
    ref = DDPMScheduler(num_train_timesteps=T)
    ref.set_timesteps(steps)
    assert samplers.ddim_timesteps(T, steps, "leading").tolist() == ref.timesteps.tolist()


# ----------------------------------------------------------------------------- DDPM step


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("float64", [False, True], ids=["as-shipped", "float64"])
def test_ddpm_step_matches_diffusers(name, clip, float64):
    T = 1000
    ours = schedules.make_schedule(name, T)
    ref = ddpm_ref(name, T, clip, float64)
    for t in [T - 1, 700, 250, 10, 1, 0]:
        x, eps = toy_inputs(seed=t)
        g_ref, g_ours = torch.Generator().manual_seed(t + 1), torch.Generator().manual_seed(t + 1)
        expected = ref.step(eps, t, x, generator=g_ref).prev_sample
        got = samplers.ddpm_step(x, eps, t, t - 1, ours, generator=g_ours, clip_x0=clip)
        atol = 1e-5 if float64 else ddpm_atol(t)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=atol, msg=f"t = {t}")


def test_ddpm_step_clip_and_noise_matter():
    """The comparisons above would be weak if clipping never bit or the noise were ignored."""
    s = schedules.make_schedule("linear", 1000)
    x, eps = toy_inputs()
    a = samplers.ddpm_step(x, eps, 700, 699, s, noise=torch.zeros_like(x), clip_x0=False)
    b = samplers.ddpm_step(x, eps, 700, 699, s, noise=torch.zeros_like(x), clip_x0=True)
    c = samplers.ddpm_step(x, eps, 700, 699, s, noise=torch.ones_like(x), clip_x0=False)
    assert (a - b).abs().max() > 1e-2
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
def test_strided_ddpm_step_matches_diffusers(name, clip):
    T, steps = 1000, 50
    ours = schedules.make_schedule(name, T)
    for float64 in (False, True):
        ref = ddpm_ref(name, T, clip, float64)
        ref.set_timesteps(steps)
        for t in [980, 500, 20, 0]:  # leading timesteps of a 50-step schedule
            t_prev = t - T // steps
            x, eps = toy_inputs(seed=t)
            g_ref, g_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
            expected = ref.step(eps, t, x, generator=g_ref).prev_sample
            got = samplers.ddpm_step(x, eps, t, max(t_prev, -1), ours, generator=g_ours, clip_x0=clip)
            atol = 1e-5 if float64 else ddpm_atol(t)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=atol, msg=f"float64={float64}, t = {t}")
    # and the stride matters: a plain one-step-back update is far from the strided one
    x, eps = toy_inputs(seed=500)
    one_back = samplers.ddpm_step(x, eps, 500, 499, ours, noise=torch.zeros_like(x))
    strided = samplers.ddpm_step(x, eps, 500, 480, ours, noise=torch.zeros_like(x))
    assert (one_back - strided).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [10, 7])
def test_whole_strided_ddpm_sample_matches_diffusers(steps):
    """ddpm_sample draws x_T and then each step's noise from one generator, as diffusers' loop does."""
    T = 1000
    ours = schedules.make_schedule("linear", T)
    ref = ddpm_ref("linear", T, clip=False)
    ref.set_timesteps(steps)

    def model(x, t):
        return 0.1 * x + 0.01 * t.float().reshape(-1, 1, 1, 1) / T

    shape = (2, 1, 4, 4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(shape[0])), t, x, generator=g).prev_sample
    got = samplers.ddpm_sample(model, shape, ours, steps=steps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- DDIM step


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_step_matches_diffusers(spacing, eta, clip, name):
    T, steps = 1000, 7  # 7 does not divide 1000: trailing and linspace are not multiples of k
    ours = schedules.make_schedule(name, T)
    ref = ddim_ref(name, T, steps, spacing, clip)
    ref64 = ddim_ref(name, T, steps, spacing, clip, float64=True)
    # our clip_x0 re-derives eps from the clipped x0_hat (GLIDE): diffusers' use_clipped_model_output
    clipped = {"use_clipped_model_output": clip}
    for t in ref.timesteps.tolist():
        # diffusers always steps back by T // steps, whatever the spacing
        t_prev = max(t - T // steps, -1)
        x, eps = toy_inputs(seed=t)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t + 100))
        got = samplers.ddim_step(x, eps, t, t_prev, ours, eta=eta, noise=noise, clip_x0=clip)
        expected = ref64.step(eps, t, x, eta=eta, variance_noise=noise, **clipped).prev_sample
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"float64: t = {t}, t_prev = {t_prev}")
        # as shipped, diffusers' float32 arithmetic cancels at both ends: 1 - alpha_bar_prev - sigma^2
        # when alpha_bar_t ~ 1e-9 (cosine, t = 999, eta = 1: ~9e-5 off), and 1 - alpha_bar_prev when
        # t_prev = 0 (cosine, clipped: ~2e-5 off); ours is within ~1e-7 of the float64 run there
        expected = ref.step(eps, t, x, eta=eta, variance_noise=noise, **clipped).prev_sample
        atol = 1e-5 if t < 990 and t_prev > 50 else 2e-4
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=atol, msg=f"as shipped: t = {t}, t_prev = {t_prev}")


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_with_generator_matches_diffusers(eta):
    T = 1000
    ours = schedules.make_schedule("linear", T)
    ref = ddim_ref("linear", T, 20, "leading", clip=False)
    x, eps = toy_inputs()
    expected = ref.step(eps, 500, x, eta=eta, generator=torch.Generator().manual_seed(5)).prev_sample
    got = samplers.ddim_step(x, eps, 500, 450, ours, eta=eta, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_whole_ddim10_trajectory_matches_diffusers(spacing, name, eta):
    """A whole 10-step DDIM run with a fixed toy model, against diffusers' own loop.

    (With "linspace" diffusers steps back by T // steps, which does not land on its next timestep,
    so its loop is not a consistent sampler there; leading and trailing with 10 | 1000 are.)
    """
    T, steps, shape = 1000, 10, (2, 3, 4, 4)
    ours = schedules.make_schedule(name, T)
    ref = ddim_ref(name, T, steps, spacing, clip=False)

    def model(x, t):
        return 0.1 * x

    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(12)
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(model(x, t), t, x, eta=eta, generator=g).prev_sample
    got = samplers.ddim_sample(model, shape, ours, steps=steps, eta=eta, spacing=spacing, x_T=x_T,
                               generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
    assert (got - x_T).abs().max() > 0.1  # the run did move
