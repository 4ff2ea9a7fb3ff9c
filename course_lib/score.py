"""The score view: densities whose score is known exactly, Langevin sampling, and the probability-flow ODE.

* :class:`GaussianMixture`: isotropic Gaussian mixtures in any dimension with a closed-form
  ``log_prob`` and ``score`` (= grad_x log p(x)), and the mixtures that noising turns them into:
  ``noised(alpha_bar)`` (DDPM's x_t) and ``perturbed(sigma)`` (Song & Ermon's x + sigma z).
* :func:`exact_eps`: the exact noise predictor of a mixture, eps = -sqrt(1 - alpha_bar_t) score_t, a
  model callable ``(x_t, t) -> eps`` that every sampler of :mod:`course_lib.samplers` runs on.
* :func:`langevin` and :func:`annealed_langevin`: Langevin dynamics (Song & Ermon, 2019, eq. 4 and
  Algorithm 1).
* :func:`pf_ode_sample`: the probability-flow ODE (Song et al., 2021, eq. 13) in the variables of
  Karras et al. (2022), solved with Euler's method (= DDIM with eta = 0) or Heun's (their Algorithm 1).
* :func:`mode_weights` and :func:`sliced_wasserstein`: two measured distances to a known law.

Shapes: points are (N, D); a mixture has K components. Randomness only through ``generator=``.
"""

import math

import torch

from .samplers import ddim_timesteps
from .schedules import at, check_t

SOLVERS = ("euler", "heun")


# ----------------------------------------------------------------------------------------------
# Gaussian mixtures with exact scores
# ----------------------------------------------------------------------------------------------

class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, s_k^2 I) in D dimensions.

    ``means`` (K, D), ``stds`` (K,) all > 0, ``weights`` (K,) >= 0 summing to 1. Parameters are kept
    in float64 (on the device of ``means``); results come back in the dtype of the input points.
    """

    def __init__(self, means, stds, weights):
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64, device=means.device)
        weights = torch.as_tensor(weights, dtype=torch.float64, device=means.device)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(means.shape)}")
        K = means.shape[0]
        if stds.shape != (K,) or weights.shape != (K,):
            raise ValueError(f"means has K = {K} rows, so stds and weights need shape ({K},); "
                             f"got stds {tuple(stds.shape)} and weights {tuple(weights.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        if not (torch.isfinite(stds).all() and (stds > 0).all()):
            raise ValueError(f"stds must be finite and > 0, got {stds.tolist()}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f"weights must be >= 0, got {weights.tolist()}")
        if abs(weights.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {weights.tolist()} (sum {weights.sum().item():.6g})")
        self.means, self.stds, self.weights = means, stds, weights

    @property
    def K(self):
        return self.means.shape[0]

    @property
    def D(self):
        return self.means.shape[1]

    def __repr__(self):
        return (f"GaussianMixture(K={self.K}, D={self.D}, means={self.means.tolist()}, "
                f"stds={self.stds.tolist()}, weights={self.weights.tolist()})")

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.D:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"points must be an (N, D) = (N, {self.D}) tensor, got {shape}")

    def log_prob(self, x):
        """log p(x) for points x (N, D); returns (N,)."""
        self._check_x(x)
        return torch.logsumexp(_component_log_probs(x, self.means, self.stds**2, self.weights), dim=1).to(x.dtype)

    def responsibilities(self, x):
        """r_k(x) = w_k N_k(x) / p(x), the posterior probability of each component; (N, K)."""
        self._check_x(x)
        return torch.softmax(_component_log_probs(x, self.means, self.stds**2, self.weights), dim=1).to(x.dtype)

    def score(self, x):
        """grad_x log p(x) = sum_k r_k(x) (mu_k - x) / s_k^2 in closed form (no autograd); (N, D)."""
        self._check_x(x)
        return _mixture_score(x, self.means, self.stds**2, self.weights)

    def sample(self, n, generator=None):
        """n points (n, D) float32: a component k ~ weights, then mu_k + s_k z."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer number of points, got {n!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn((n, self.D), generator=generator, dtype=torch.float64, device=self.means.device)
        return (self.means[k] + self.stds[k, None] * z).float()

    def noised(self, alpha_bar):
        """The law of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps for x_0 ~ p (Ho et al., 2020, eq. 4):
        means sqrt(alpha_bar) mu_k, variances alpha_bar s_k^2 + 1 - alpha_bar."""
        ab = _as_float(alpha_bar, "alpha_bar")
        if not 0 < ab <= 1:
            raise ValueError(f"alpha_bar must be in (0, 1], got {ab}")
        return GaussianMixture(math.sqrt(ab) * self.means, (ab * self.stds**2 + (1 - ab)).sqrt(), self.weights)

    def perturbed(self, sigma):
        """The law of x + sigma z, z ~ N(0, I) (Song & Ermon, 2019, Sec. 4.1): variances s_k^2 + sigma^2."""
        sigma = _as_float(sigma, "sigma")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        return GaussianMixture(self.means, (self.stds**2 + sigma**2).sqrt(), self.weights)


def _component_log_probs(x, means, variances, weights):
    """log w_k + log N(x; m_k, v_k I) for every point and component: (N, K), float64.

    ``means`` (K, D) or (N, K, D) and ``variances`` (K,) or (N, K): per-point parameters let each row
    of a batch have its own noise level.
    """
    x64 = x.double().unsqueeze(1)  # (N, 1, D)
    D = x.shape[1]
    sq = (x64 - means).pow(2).sum(-1)  # (N, K)
    return weights.log() - 0.5 * sq / variances - 0.5 * D * (variances.log() + math.log(2 * math.pi))


def _mixture_score(x, means, variances, weights):
    """sum_k r_k(x) (m_k - x) / v_k with r = softmax over components: (N, D) in x's dtype."""
    r = torch.softmax(_component_log_probs(x, means, variances, weights), dim=1)  # (N, K)
    pull = (means - x.double().unsqueeze(1)) / variances.unsqueeze(-1)  # (N, K, D)
    return (r.unsqueeze(-1) * pull).sum(1).to(x.dtype)  # (N, D)


def _as_float(value, name):
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def exact_eps(mixture, schedule):
    """The exact noise predictor for data x_0 ~ ``mixture``: a model callable ``model(x_t, t) -> eps`` with

        eps(x_t, t) = -sqrt(1 - alpha_bar_t) grad log p_t(x_t),   p_t = mixture.noised(alpha_bar_t),

    which is E[eps | x_t], what a perfectly trained epsilon-network outputs (Tweedie; Vincent, 2011).
    ``t``: an int or a (B,) tensor, each row with its own timestep. Coefficients in float64
    (1 - alpha_bar cancels in float32 near t = 0).
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    alpha_bar = torch.cumprod(1 - schedule.betas.double(), dim=0)  # (T,) float64
    one_minus = 1 - alpha_bar

    def model(x_t, t):
        mixture._check_x(x_t)
        t = check_t(t, schedule.T).to(x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        probe = x_t.double()
        ab, om = at(alpha_bar, t, probe), at(one_minus, t, probe)  # (B, 1) each
        means = ab.sqrt().unsqueeze(-1) * mixture.means.to(x_t.device)  # (B, K, D)
        variances = ab * mixture.stds.to(x_t.device) ** 2 + om  # (B, K)
        score = _mixture_score(x_t, means, variances, mixture.weights.to(x_t.device)).double()
        return (-om.sqrt() * score).to(x_t.dtype)

    return model


# ----------------------------------------------------------------------------------------------
# Langevin dynamics
# ----------------------------------------------------------------------------------------------

def _check_step_size(step_size):
    if isinstance(step_size, torch.Tensor):
        step_size = step_size.item()
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise ValueError(f"step_size must be a number > 0, got {step_size!r}")
    if not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
    return float(step_size)


def _check_count(n, name, minimum):
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")


def _check_points(x):
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.numel() == 0 or not x.is_floating_point():
        raise ValueError(f"x must be a non-empty floating-point tensor with the batch first, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _score_of(score_fn, x, *args):
    s = score_fn(x, *args)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    return s


@torch.no_grad()
def langevin(score_fn, x, step_size, n_steps, generator=None):
    """Langevin dynamics (Song & Ermon, 2019, eq. 4): ``n_steps`` times

        x <- x + (eps / 2) score_fn(x) + sqrt(eps) z,   z ~ N(0, I),   eps = step_size.

    As eps -> 0 and n_steps -> inf the samples follow p, *if* the chain mixes: with separated modes,
    each point stays in the mode it starts in, so the mode weights come from the initialisation
    (their Sec. 3.2.2). A step is stable only when eps < 4 s^2 for the narrowest component std s.
    ``x``: starting points (batch first); returns the final points.
    """
    _check_points(x)
    eps = _check_step_size(step_size)
    _check_count(n_steps, "n_steps", 0)
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # a fresh draw every step
        x = x + (eps / 2) * _score_of(score_fn, x) + math.sqrt(eps) * z
    return x


def geometric_sigmas(sigma_max, sigma_min, levels):
    """``levels`` noise levels from ``sigma_max`` down to ``sigma_min``, equally spaced in log (Song & Ermon, 2019, Sec. 4.2)."""
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    _check_count(levels, "levels", 2)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), levels, dtype=torch.float64)


def check_sigmas(sigmas):
    """Noise levels as a (L,) float64 tensor; ``ValueError`` unless positive, finite, strictly decreasing."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 1:
        raise ValueError("sigmas must hold at least one noise level")
    if not (torch.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise ValueError(f"sigmas must be finite and > 0, got {sigmas.tolist()}")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(f"sigmas must be strictly decreasing (sigma_1 > ... > sigma_L, largest first), "
                         f"got {sigmas.tolist()}")
    return sigmas


@torch.no_grad()
def annealed_langevin(score_fn, x, sigmas, step_size, steps_per_level, generator=None):
    """Annealed Langevin dynamics, Song & Ermon (2019), Algorithm 1, in the paper's convention:

        for i = 1..L:   alpha_i = eps * sigma_i^2 / sigma_L^2
            repeat T times:   x <- x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z

    with eps = ``step_size``, T = ``steps_per_level``, sigma_1 > ... > sigma_L = ``sigmas`` (largest
    first) and ``score_fn(x, sigma)`` the score of the data perturbed by N(0, sigma^2 I). alpha_i is
    proportional to sigma_i^2 so that the "signal-to-noise ratio" of every update is the same at each level.

    Their image code (``anneal_Langevin_dynamics`` in the NCSN repository) writes the same update as

        x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) z,   a_i = step_lr * (sigma_i / sigma_L)^2,

    i.e. a_i = alpha_i / 2: the code's ``step_lr`` is half the paper's eps. Its default step_lr = 2e-5 is
    the number the paper quotes for eps, so the code runs at half the paper's step. To reproduce the
    code here, pass ``step_size = 2 * step_lr``.
    """
    _check_points(x)
    sigmas = check_sigmas(sigmas)
    eps = _check_step_size(step_size)
    _check_count(steps_per_level, "steps_per_level", 1)
    sigma_L = sigmas[-1].item()  # the smallest noise level
    for sigma in sigmas.tolist():
        alpha = eps * sigma**2 / sigma_L**2
        for _ in range(steps_per_level):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + (alpha / 2) * _score_of(score_fn, x, sigma) + math.sqrt(alpha) * z
    return x


# ----------------------------------------------------------------------------------------------
# The probability-flow ODE
# ----------------------------------------------------------------------------------------------

def ode_sigmas(schedule):
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..T-1, float64 (T,): the noise level of
    y = x / sqrt(alpha_bar), for which y_t = x_0 + sigma_t eps (Karras et al., 2022, Sec. 2 / Table 1)."""
    alpha_bar = torch.cumprod(1 - schedule.betas.double(), dim=0)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


@torch.no_grad()
def pf_ode_sample(model, x_T, schedule, steps, solver="euler", spacing="leading"):
    """Integrate the probability-flow ODE (Song et al., 2021, eq. 13) from x_T to x_0; returns ``(x_0, nfe)``.

    For DDPM's forward process, write sigma = sqrt((1 - alpha_bar) / alpha_bar) and y = x / sqrt(alpha_bar).
    Then y_t = x_0 + sigma_t eps and the ODE is (Karras et al., 2022, eq. 4 with s = 1 in y; Song et al.,
    2021b, eq. 14)

        dy / dsigma = eps_theta(x, t),   x = sqrt(alpha_bar_t) y,

    integrated from the first visited timestep of ``ddim_timesteps(T, steps, spacing)`` down to sigma = 0
    (the clean end, t = -1). ``x_T`` is x at that first timestep.

    * ``"euler"``: y <- y + (sigma_next - sigma) eps. This *is* DDIM with eta = 0 (Song et al., 2021b,
      eq. 13): the same number, step for step. ``steps`` network evaluations.
    * ``"heun"``: Karras et al. (2022), Algorithm 1: an Euler step, then eps at its end point and the
      average of the two slopes; no correction on the last step to sigma = 0 (where eps is undefined).
      2 * steps - 1 network evaluations.

    ``model(x_t, t)`` is called with a (B,) long tensor of timesteps. Coefficients in float64.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers are {', '.join(SOLVERS)}")
    _check_points(x_T)
    timesteps = ddim_timesteps(schedule.T, steps, spacing).tolist()  # noisiest first
    alpha_bar = torch.cumprod(1 - schedule.betas.double(), dim=0)
    sigmas = ode_sigmas(schedule)
    nfe = 0

    def eps_at(y, t):
        nonlocal nfe
        nfe += 1
        x = (alpha_bar[t].sqrt() * y).to(x_T.dtype)  # back to x_t = sqrt(alpha_bar_t) y
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        if eps.shape != x.shape:
            raise ValueError(f"model returned eps of shape {tuple(eps.shape)} for x of shape {tuple(x.shape)}")
        return eps.double()

    y = x_T.double() / alpha_bar[timesteps[0]].sqrt()  # (B, ...) in the y variables
    for t, t_next in zip(timesteps, timesteps[1:] + [-1]):
        sigma, sigma_next = sigmas[t], (sigmas[t_next] if t_next >= 0 else sigmas.new_zeros(()))
        d = eps_at(y, t)  # dy/dsigma at (y, sigma)
        y_next = y + (sigma_next - sigma) * d  # Euler step
        if solver == "heun" and t_next >= 0:  # second-order correction, not on the step to sigma = 0
            d_next = eps_at(y_next, t_next)
            y_next = y + (sigma_next - sigma) * (d + d_next) / 2
        y = y_next
    return y.to(x_T.dtype), nfe  # at sigma = 0, alpha_bar = 1: y = x_0


# ----------------------------------------------------------------------------------------------
# Measuring samples against a known law
# ----------------------------------------------------------------------------------------------

def mode_weights(mixture, x):
    """The fraction of points assigned to each component (by the largest responsibility under
    ``mixture``): (K,) float. Non-finite points count for no component, so diverged samples show as
    weights that sum to less than 1."""
    mixture._check_x(x)
    finite = torch.isfinite(x).all(dim=1)
    k = mixture.responsibilities(x[finite].double()).argmax(dim=1)
    return torch.bincount(k, minlength=mixture.K).double() / x.shape[0]


def sliced_wasserstein(a, b, n_projections=256, generator=None):
    """Sliced 1-Wasserstein distance between two point clouds a (N, D) and b (M, D) (Rabin et al., 2011):
    the average over random unit directions of the 1-D Wasserstein-1 distance of the projections,
    computed from quantiles at N = M points or, if the sizes differ, at 1,000 common levels."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) point clouds with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    dirs = torch.randn((a.shape[1], n_projections), generator=generator, dtype=torch.float64)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device)
    pa, pb = a.double() @ dirs, b.double() @ dirs  # (N, P), (M, P)
    if a.shape[0] == b.shape[0]:
        qa, qb = pa.sort(dim=0).values, pb.sort(dim=0).values
    else:
        levels = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64, device=a.device)
        qa, qb = torch.quantile(pa, levels, dim=0), torch.quantile(pb, levels, dim=0)
    return (qa - qb).abs().mean().item()
