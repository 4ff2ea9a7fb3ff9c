"""Checks for lesson 03 (DDPM): the posterior q(x_{t-1} | x_t, x_0), the simplified training loss,
one ancestral sampling step, and the widget-driven "when does the model commit to a digit" question.

Each check runs the learner's function on small fixed inputs and compares its *behaviour* with
``course_lib`` (the reference implementation) or with known values, in a fraction of a second.
Paper: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models"; their t = 1..T is the
course's t = 0..T-1, with alpha_bar_{-1} = 1 standing for the clean image.
"""

import torch
import torch.nn.functional as F

from ..diffusion import q_posterior, q_sample
from ..samplers import ddpm_step
from ..schedules import at, make_schedule
from . import expect_close, expect_tensor, fail, passed


def _alpha_bar_prev(schedule):
    """alpha_bar_{t-1} for t = 0..T-1, with alpha_bar_{-1} = 1."""
    return torch.cat([torch.ones(1), schedule.alpha_bars[:-1]])


# ----------------------------------------------------------------------------------------------
# Exercise 3.1: the posterior q(x_{t-1} | x_t, x_0) (Ho et al., 2020, eqs. 6-7)
# ----------------------------------------------------------------------------------------------

def check_posterior(posterior_fn):
    """``posterior_fn(x0, x_t, t, schedule) -> (mean, variance)`` with t a (B,) long tensor;
    compared with ``diffusion.q_posterior``, including t = 0 (variance 0, mean x_0)."""
    ex = "3.1"
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(31)
    shape = (6, 1, 4, 4)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    x_t = torch.randn(shape, generator=g)
    t = torch.tensor([0, 1, 10, 250, 998, 999])
    hint_mean = ("eq. 7: mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x_0 "
                 "+ sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t; alpha_t = 1 - beta_t is the "
                 "one-step value (schedule.alphas), alpha_bar the cumulative product (schedule.alpha_bars)")
    hint_var = "eq. 7: variance beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t"
    hint_t0 = ("at t = 0 the previous 'step' is the clean image: alpha_bar_{-1} = 1, so the variance is 0 and the "
               "mean is x_0. Careful: schedule.alpha_bars[t - 1] at t = 0 is alpha_bars[-1], the NOISIEST entry")

    out = posterior_fn(x0, x_t, t, schedule)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        fail(ex, f"expected a pair (mean, variance), got {type(out).__name__}",
             "return mean, variance  (two tensors)")
    mean, var = out
    expect_tensor(ex, mean, shape, "the posterior mean")
    if not isinstance(var, torch.Tensor):
        fail(ex, f"the variance should be a torch.Tensor, got {type(var).__name__}",
             "build it from schedule tensors indexed with t, shaped (B, 1, 1, 1)")
    try:
        var_full = torch.broadcast_to(var, shape)
    except RuntimeError:
        fail(ex, f"the variance has shape {tuple(var.shape)}, which does not broadcast against x_t {shape}",
             "index the per-timestep numbers with t and reshape them to (B, 1, 1, 1), e.g. with schedules.at")
    ref_mean, ref_var = q_posterior(x0, x_t, t, schedule)
    ref_var = torch.broadcast_to(ref_var, shape)
    # x_0 and x_t swapped: each coefficient multiplies the other image
    swapped, _ = q_posterior(x_t, x0, t, schedule)
    if not torch.allclose(mean, ref_mean, atol=1e-4, rtol=1e-3) and torch.allclose(mean, swapped, atol=1e-4, rtol=1e-3):
        fail(ex, "your posterior mean has x_0 and x_t swapped: each coefficient multiplies the other image",
             "in eq. 7 the coefficient with sqrt(alpha_bar_{t-1}) beta_t goes with x_0 (the clean image) and the one with "
             "sqrt(alpha_t) (1 - alpha_bar_{t-1}) goes with x_t; check the order of the arguments (x0, x_t, t, schedule)")

    # the "fixed large" choice sigma^2 = beta_t first: a named diagnosis
    beta = at(schedule.betas, t, x0).expand(shape)
    if torch.allclose(var_full, beta, rtol=1e-4):
        fail(ex, "your variance equals beta_t: that is the 'fixed large' reverse variance (Ho et al., Sec. 3.2), "
                 "not the posterior's (you also get it by using alpha_bar_t where eq. 7 has alpha_bar_{t-1})", hint_var)
    # t = 0: the most common slip is alpha_bars[t - 1] wrapping round to the last entry
    if not torch.isfinite(var_full[0]).all() or var_full[0].abs().max() > 1e-6:
        fail(ex, f"at t = 0 the variance should be 0, got {var_full[0].flatten()[0].item():.4g}", hint_t0)
    # (float32: 1 - alpha_bar_0 differs from beta_0 in the 4th digit, hence the tolerance)
    expect_close(ex, mean[0], x0[0], hint_t0, name="the mean at t = 0 (should equal x_0)", atol=2e-3)
    # the library computes its coefficients in float64; float32 code loses ~4 digits of 1 - alpha_bar
    # near t = 0, hence relative tolerances of 1e-3 (the slips above are caught separately)
    expect_close(ex, var_full, ref_var, hint_var, name="the posterior variance", atol=1e-7, rtol=1e-3)
    expect_close(ex, mean, ref_mean, hint_mean, name="the posterior mean", atol=1e-4, rtol=1e-3)

    passed(ex, "mean and variance match eqs. 6-7 at t = 0, 1, 10, 250, 998, 999 "
               f"(e.g. beta_tilde_999 / beta_999 = {ref_var[5, 0, 0, 0] / beta[5, 0, 0, 0]:.4f}, "
               f"beta_tilde_1 / beta_1 = {ref_var[1, 0, 0, 0] / beta[1, 0, 0, 0]:.4f}).")


# ----------------------------------------------------------------------------------------------
# Exercise 3.2: the simplified loss (Ho et al., 2020, eq. 14 and Algorithm 1)
# ----------------------------------------------------------------------------------------------

class _ProbeModel(torch.nn.Module):
    """A tiny epsilon-'network' whose output depends on both x_t and t, with one trainable weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.6))

    def forward(self, x_t, t):
        t = torch.as_tensor(t).expand(x_t.shape[0]).float()
        return self.w * x_t + 1e-3 * t.reshape(-1, *([1] * (x_t.ndim - 1))) - 0.2


def check_simple_loss(loss_fn):
    """``loss_fn(model, x0, t, eps, schedule) -> scalar``: the mean squared error between ``eps`` and the
    model's prediction at x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Checked on a probe model
    against the reference, with an oracle model (loss 0), a zero model (loss = mean eps^2), and gradients."""
    ex = "3.2"
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(32)
    shape = (8, 1, 4, 4)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    eps = torch.randn(shape, generator=g)
    t = torch.tensor([0, 3, 40, 200, 500, 700, 900, 999])
    hint = ("Algorithm 1 / eq. 14: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (diffusion.q_sample with "
            "noise=eps), then the MEAN over all entries of (eps - model(x_t, t))^2")

    model = _ProbeModel()
    loss = loss_fn(model, x0, t, eps, schedule)
    if not isinstance(loss, torch.Tensor):
        fail(ex, f"the loss should be a torch.Tensor, got {type(loss).__name__}",
             "return the tensor itself: a Python float (.item()) cannot be back-propagated")
    if loss.numel() != 1:
        fail(ex, f"the loss should be one number (a scalar), got shape {tuple(loss.shape)}",
             "average over the batch and all pixels: ((eps - eps_hat) ** 2).mean()")
    with torch.no_grad():
        x_t = q_sample(x0, t, schedule, noise=eps)
        ref = F.mse_loss(model(x_t, t), eps)
        as_x0 = F.mse_loss(model(x_t, t), x0)
        on_clean = F.mse_loss(model(x0, t), eps)
        summed = ((model(x_t, t) - eps) ** 2).sum()
        shifted = F.mse_loss(model(x_t, (t + 1).clamp(max=999)), eps)
    value = loss.detach().reshape(())
    if not torch.allclose(value, ref, rtol=1e-4):
        if torch.allclose(value, as_x0, rtol=1e-4):
            fail(ex, f"your loss ({value.item():.5f}) compares the prediction with x_0; the target is the noise eps "
                     f"(expected {ref.item():.5f})", hint)
        if torch.allclose(value, on_clean, rtol=1e-4):
            fail(ex, f"your loss ({value.item():.5f}) feeds the clean x_0 to the model; it must see the noised x_t "
                     f"(expected {ref.item():.5f})", hint)
        if torch.allclose(value, summed, rtol=1e-4):
            fail(ex, f"your loss ({value.item():.3f}) is a sum; eq. 14 is an expectation, so take the mean "
                     f"(expected {ref.item():.5f})", hint)
        if torch.allclose(value, shifted, rtol=1e-4):
            fail(ex, f"your loss ({value.item():.5f}) calls the model at t + 1 (expected {ref.item():.5f})",
                 "the course's t is already 0-based: pass t itself to q_sample and to the model")
        fail(ex, f"your loss is {value.item():.5f}, expected {ref.item():.5f} for the same x_0, t, eps", hint)

    if not loss.requires_grad:
        fail(ex, "your loss carries no gradient (requires_grad is False), so training could not update the model",
             "do not wrap the model call in torch.no_grad() and do not call .item() or .detach()")
    loss.backward()
    if model.w.grad is None or model.w.grad.abs() < 1e-8:
        fail(ex, "back-propagating your loss gave no gradient for the model's weight", hint)

    oracle = lambda x_t, t: eps  # noqa: E731 - knows the true noise
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    loss_oracle = float(loss_fn(oracle, x0, t, eps, schedule))
    loss_zero = float(loss_fn(zero, x0, t, eps, schedule))
    expect_close(ex, loss_oracle, 0.0, hint, name="the loss of a model that returns the true eps", atol=1e-6)
    expect_close(ex, loss_zero, eps.pow(2).mean().item(), hint, name="the loss of a model that returns 0")
    passed(ex, f"matches eq. 14 on a probe model ({value.item():.4f}); a perfect model scores 0 and "
               f"predicting 0 scores mean(eps^2) = {loss_zero:.3f} (about 1, the variance of the noise).")


# ----------------------------------------------------------------------------------------------
# Exercise 3.3: one ancestral step (Ho et al., 2020, Algorithm 2, line 4)
# ----------------------------------------------------------------------------------------------

def check_ddpm_step(step_fn):
    """``step_fn(x_t, eps, t, schedule, z) -> x_{t-1}`` with an int t, against ``samplers.ddpm_step``
    (sigma_t^2 = beta_tilde_t) with the same noise z, and no noise at t = 0."""
    ex = "3.3"
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(33)
    shape = (3, 1, 6, 6)
    x_t = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    z = torch.randn(shape, generator=g)
    hint = ("Algorithm 2, line 4: x_{t-1} = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) + sigma_t z, "
            "with alpha_t = 1 - beta_t (one step, schedule.alphas) but alpha_bar_t (cumulative) under the square root")
    hint_sigma = ("this course (and the library) uses sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / "
                  "(1 - alpha_bar_t) * beta_t, the posterior variance of eq. 7")
    hint_t0 = "at t = 0 the step lands on the clean image: Algorithm 2 adds no noise there (z = 0)"

    def diagnose(out, t):
        """Fail with the hint that names the slip, if ``out`` matches a known wrong step at t."""
        t_prev = t - 1
        ref = ddpm_step(x_t, eps, t, t_prev, schedule, noise=z)
        if torch.allclose(out, ref, atol=1e-4):
            return
        mean = ddpm_step(x_t, eps, t, t_prev, schedule, noise=torch.zeros_like(z))
        beta, alpha_bar = schedule.betas[t].double(), schedule.alpha_bars[t].double()
        sigma = 0.0 if t == 0 else ((1 - schedule.alpha_bars[t - 1].double()) / (1 - alpha_bar) * beta).sqrt().float()
        # the missing-sqrt slips, each named: which square root of Algorithm 2 was left out?
        slips = {
            "sqrt(1 - alpha_bar_t)": (x_t - (beta / (1 - alpha_bar)).float() * eps) / (1 - beta).sqrt().float() + sigma * z,
            "sqrt(alpha_t)": (x_t - (beta / (1 - alpha_bar).sqrt()).float() * eps) / (1 - beta).float() + sigma * z,
        }
        if t > 0:
            slips["sqrt of the variance (sigma_t = beta_tilde_t instead of its square root)"] = mean + sigma**2 * z
        for root, wrong in slips.items():
            if torch.allclose(out, wrong, atol=1e-4):
                fail(ex, f"at t = {t} your step is missing a square root: {root}", hint)
        if t == 0:
            diff = out - ref
            c = (diff * z).sum() / (z * z).sum()  # is the difference a multiple of the noise?
            if c.abs() > 1e-4 and torch.allclose(diff, c * z, atol=1e-4):
                fail(ex, f"at t = 0 your step adds {c.item():.4g} * z to the reference", hint_t0)
        else:
            if torch.allclose(out, mean + schedule.betas[t].sqrt() * z, atol=1e-4):
                fail(ex, f"at t = {t} your step uses sigma_t^2 = beta_t ('fixed large')", hint_sigma)
            if torch.allclose(out, mean, atol=1e-4):
                fail(ex, f"at t = {t} your step adds no noise", "add sigma_t * z for every t > 0; " + hint_sigma)
        expect_close(ex, out, ref, hint, name=f"your step at t = {t}", atol=1e-4)

    for t in (0, 999, 600, 100, 1):  # t = 0 first: the final step is deterministic
        out = step_fn(x_t, eps, t, schedule, z)
        expect_tensor(ex, out, shape, f"your step at t = {t}")
        diagnose(out, t)
    passed(ex, "Algorithm 2's update matches the library's posterior-mean step at t = 999, 600, 100, 1, "
               "and adds no noise at t = 0.")


# ----------------------------------------------------------------------------------------------
# Exercise 3.4 (widget): when does the model commit to a digit?
# ----------------------------------------------------------------------------------------------

def commit_timestep(timesteps, labels):
    """The largest recorded t from which on (down to the end) the label of x0_hat equals the final label.

    ``timesteps``: the recorded t of each state, decreasing, the last one -1 (the final sample);
    ``labels``: the evaluation classifier's label of x0_hat at each state (the last: of the final sample).
    """
    timesteps, labels = [int(t) for t in timesteps], [int(y) for y in labels]
    final, k = labels[-1], len(labels) - 1
    while k > 0 and labels[k - 1] == final:
        k -= 1
    return timesteps[k]


def check_commit_timestep(answer, timesteps, labels, tolerance=2):
    """Widget exercise: ``answer`` should be the largest t at which the classifier's reading of x0_hat
    already equals the final digit and stays so. Accepted within ``tolerance`` recorded states (of the
    scrubber's slider) of the exact value."""
    ex = "3.4"
    timesteps, labels = [int(t) for t in timesteps], [int(y) for y in labels]
    if len(timesteps) != len(labels) or len(timesteps) < 2:
        fail(ex, f"need one label per recorded state, got {len(timesteps)} timesteps and {len(labels)} labels",
             "pass the scrubber's timesteps and the labels computed for its x0_hats")
    if isinstance(answer, bool) or not isinstance(answer, int):
        fail(ex, f"answer should be a whole timestep, got {answer!r}", "read t off the scrubber's readout and type it")
    if answer not in timesteps:
        fail(ex, f"t = {answer} is not one of the recorded timesteps ({timesteps[0]}, {timesteps[1]}, ..., {timesteps[-2]})",
             "move the slider and copy the t shown in its readout")
    ref = commit_timestep(timesteps, labels)
    k_ans, k_ref = timesteps.index(answer), timesteps.index(ref)
    final = labels[-1]
    if abs(k_ans - k_ref) > tolerance:
        if k_ans > k_ref:
            fail(ex, f"at t = {answer} the reading is the final digit {final}, but it already is, and stays so, "
                     "from a much larger t on",
                 "scrub BACK towards the noisy end (smaller step index) and find the last change of the reading")
        later = [k for k in range(k_ans, len(labels)) if labels[k] != final]
        fail(ex, f"from t = {answer} on, the reading still changes (at t = {timesteps[later[-1]]} it reads "
                 f"{labels[later[-1]]}, not the final {final})",
             "scrub further towards the clean end (larger step index) until the reading no longer changes")
    passed(ex, f"the classifier's reading of x0_hat settles on the final digit {final} at about t = {ref} "
               f"(sampling started at t = {timesteps[0]}): the rest of the trajectory adds detail, not identity.")
