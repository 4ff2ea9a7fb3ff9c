"""Guidance as wrappers: each takes a network and returns a new model callable ``(x_t, t) -> eps``
that any sampler in :mod:`course_lib.samplers` accepts unchanged.

The guidance scale is called ``s`` throughout the course, in one convention:

    eps_guided = eps_u + s (eps_c - eps_u),    s = 0: unconditional,  s = 1: plain conditional.

Ho & Salimans (2022, eq. 6) write (1 + w) eps_c - w eps_u, so their w = s - 1
(:func:`s_from_ho_w`, :func:`ho_w_from_s`).
"""

import math

import torch

from .schedules import at


def s_from_ho_w(w):
    """The course's (and diffusers') scale s from Ho & Salimans' w: s = 1 + w (their w = 0 is no guidance)."""
    return 1.0 + _finite("w", w)


def ho_w_from_s(s):
    """Ho & Salimans' w from the course's scale s: w = s - 1."""
    return _finite("s", s) - 1.0


def _finite(name, value):
    """``value`` as a float; NaN and infinite scales would turn every sample into NaN, so refuse them."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}: a NaN or infinite guidance scale "
                         "turns every sample into NaN")
    return value


def _labels(y, B, device):
    """``y`` (an int or a (B,) tensor) as a (B,) long tensor on ``device``; a clear error otherwise."""
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point():
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.ndim == 0:
        return y.long().expand(B)
    if y.shape != (B,):
        raise ValueError(f"labels have shape {tuple(y.shape)} but the batch has {B} images: "
                         f"pass one label per image, shape ({B},), or a single int for all of them")
    return y.long()


def _null_class(net, null_class):
    """The network's "no label" class: ``null_class`` if given, else ``net.null_class``."""
    if null_class is None:
        null_class = getattr(net, "null_class", None)
    if null_class is None:
        raise ValueError("this network has no null class (no `.null_class` and none passed): it was not trained with "
                         "label dropout, so it has no unconditional mode to guide from. Train it with "
                         "train.diffusion_loss(schedule, label_dropout=0.1, null_class=...) or pass null_class=")
    return int(null_class)


def with_label(net, y):
    """The class-conditional network ``net(x, t, y)`` with the label fixed: a model callable ``(x_t, t) -> eps``.
    ``y``: one int for the whole batch or a (B,) tensor."""

    def model(x_t, t):
        return net(x_t, t, _labels(y, x_t.shape[0], x_t.device))

    return model


def unconditional(net, null_class=None):
    """The unconditional mode of a class-conditional network trained with label dropout: ``net`` with the
    null class as its label (``net.null_class`` unless given)."""
    return with_label(net, _null_class(net, null_class))


class ClassifierFree:
    """Classifier-free guidance (Ho & Salimans, 2022, eq. 6) in the course's convention:

        eps_guided = eps(x_t, null) + s * (eps(x_t, y) - eps(x_t, null))

    s = 0 is the unconditional model, s = 1 the conditional one, s > 1 pushes samples towards the
    class (sharper, less diverse). Ho & Salimans' w is s - 1. Both passes run as one batch of size 2B;
    at s = 1 only the conditional pass runs and at s = 0 only the unconditional one (the other term
    has weight 0).

    ``net(x, t, y)`` is a class-conditional network trained with label dropout, so that the label
    ``null_class`` (default ``net.null_class``) means "no label".
    """

    def __init__(self, net, y, s, null_class=None):
        self.net, self.y, self.s = net, y, _finite("s", s)
        self.null_class = _null_class(net, null_class)

    def __call__(self, x_t, t):
        B = x_t.shape[0]
        y = _labels(self.y, B, x_t.device)
        t = torch.as_tensor(t, device=x_t.device).expand(B)
        null = torch.full_like(y, self.null_class)
        if self.s == 1.0:  # exactly the conditional model: the unconditional term has weight 0
            return self.net(x_t, t, y)
        if self.s == 0.0:
            return self.net(x_t, t, null)
        # one forward pass over [conditional; unconditional]
        eps = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, H, W)
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + self.s * (eps_cond - eps_uncond)


def classifier_free(net, y, s, null_class=None):
    """Return the classifier-free guided model callable; see :class:`ClassifierFree`."""
    return ClassifierFree(net, y, s, null_class)


class ClassifierGuided:
    """Classifier guidance (Dhariwal & Nichol, 2021, Algorithm 2 / eq. 14 for DDIM):

        eps_guided = eps(x_t) - scale * sqrt(1 - alpha_bar_t) * grad_{x_t} log p_phi(y | x_t, t)

    ``model(x_t, t) -> eps`` is an unconditional model callable (for a class-conditional network:
    :func:`unconditional`). ``classifier(x_t, t) -> logits`` must be trained on noised images (it sees
    x_t, not x_0), and is called with the sampler's own timestep t, i.e. the original timestep in
    0..T-1 even when sampling with fewer steps.
    """

    def __init__(self, model, classifier, y, scale, schedule):
        self.model, self.classifier = model, classifier
        self.y, self.scale, self.schedule = y, _finite("scale", scale), schedule

    def __call__(self, x_t, t):
        B = x_t.shape[0]
        y = _labels(self.y, B, x_t.device)
        t = torch.as_tensor(t, device=x_t.device).expand(B)
        try:
            eps = self.model(x_t, t)
        except TypeError as err:
            raise ValueError(f"model(x_t, t) failed ({err}): classifier guidance needs an unconditional model "
                             "callable; for a class-conditional network pass guidance.unconditional(net)") from err
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x, t), dim=-1)  # (B, classes)
            if y.max() >= log_probs.shape[1] or y.min() < 0:
                raise ValueError(f"labels must be in 0..{log_probs.shape[1] - 1} for this classifier, got {y.tolist()}")
            selected = log_probs[torch.arange(B, device=x.device), y].sum()
            grad = torch.autograd.grad(selected, x)[0]
        return eps - self.scale * (1 - at(self.schedule.alpha_bars, t, x_t)).sqrt() * grad


def classifier_guided(model, classifier, y, scale, schedule):
    """Return the classifier-guided model callable; see :class:`ClassifierGuided`."""
    return ClassifierGuided(model, classifier, y, scale, schedule)


# ----------------------------------------------------------------------------------------------
# Lesson 07: the conventions in one table, and two refinements of classifier-free guidance
# ----------------------------------------------------------------------------------------------

#: How the literature writes the guided prediction, each with the value that means "the plain conditional
#: model". ``s_from(convention, value)`` turns any of them into the course's s.
CFG_CONVENTIONS = {
    "course": "eps_u + s (eps_c - eps_u); s = 1: plain conditional (this course, lessons 07-09)",
    "diffusers": "eps_u + guidance_scale (eps_c - eps_u); guidance_scale = 1: plain conditional (= s)",
    "ho_salimans": "(1 + w) eps_c - w eps_u; w = 0: plain conditional (Ho & Salimans, 2022, eq. 6): s = 1 + w",
    "lerp": "(1 - w) eps_u + w eps_c; w = 1: plain conditional (the same line written as a lerp): s = w",
}


def s_from(convention, value):
    """The course's s for a guidance strength ``value`` written in ``convention`` (a key of
    :data:`CFG_CONVENTIONS`): Ho & Salimans' w gives s = 1 + w; diffusers' guidance_scale and the lerp
    weight are already s (both put the conditional model at 1)."""
    if convention not in CFG_CONVENTIONS:
        raise ValueError(f"unknown CFG convention {convention!r}; valid ones are {', '.join(CFG_CONVENTIONS)}")
    return s_from_ho_w(value) if convention == "ho_salimans" else _finite("s", value)


def cfg_pair(net, x_t, t, y, null_class=None):
    """``(eps_cond, eps_uncond)``: the conditional and unconditional predictions of the class-conditional
    ``net(x, t, y)`` from ONE forward pass over the batch ``[x_t; x_t]`` with labels ``[y; null]`` (2B)."""
    B = x_t.shape[0]
    y = _labels(y, B, x_t.device)
    t = torch.as_tensor(t, device=x_t.device).expand(B)
    null = torch.full_like(y, _null_class(net, null_class))
    eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, ...)
    return eps.chunk(2)  # each (B, ...)


def rescale_guidance(eps_cfg, eps_cond, phi):
    """Guidance rescale (Lin et al., 2024, Sec. 3.4 and their Algorithm 2):

        sigma_pos = std(eps_cond),  sigma_cfg = std(eps_cfg)       (each image on its own)
        eps_rescaled = eps_cfg * sigma_pos / sigma_cfg
        eps_final = phi * eps_rescaled + (1 - phi) * eps_cfg

    A large guidance scale inflates the prediction's standard deviation (over-exposed, saturated images);
    this pulls it back to that of the conditional prediction, by a fraction ``phi`` in [0, 1] (the paper
    uses 0.7). Lin et al. write it for the network's output (v in their model); like diffusers'
    ``rescale_noise_cfg`` it is applied here to eps. Standard deviations over all dimensions but the first."""
    phi = _finite("phi", phi)
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"phi is a mixing weight in [0, 1] (0: plain CFG, 1: fully rescaled), got {phi}")
    if eps_cfg.shape != eps_cond.shape or eps_cfg.ndim < 2:
        raise ValueError(f"eps_cfg {tuple(eps_cfg.shape)} and eps_cond {tuple(eps_cond.shape)} must have the same "
                         "(B, ...) shape with at least one dimension after the batch")
    dims = tuple(range(1, eps_cfg.ndim))
    ratio = eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return phi * (eps_cfg * ratio) + (1 - phi) * eps_cfg


class RescaledClassifierFree(ClassifierFree):
    """Classifier-free guidance with guidance rescale (Lin et al., 2024, Sec. 3.4; :func:`rescale_guidance`):
    the guided prediction of :class:`ClassifierFree` (scale ``s``), its per-image std pulled back towards that
    of the conditional prediction by the fraction ``phi``. At s = 1 it is the conditional model (one pass).

    Which prediction: without ``schedule``, eps (as diffusers' ``guidance_rescale``); with ``schedule``, the
    predicted clean image x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) is rescaled and turned
    back into eps. Lin et al.'s network predicts v, which is close to -x0 at high noise and to eps at low noise."""

    def __init__(self, net, y, s, phi=0.7, null_class=None, schedule=None):
        super().__init__(net, y, s, null_class)
        self.phi = _finite("phi", phi)
        if not 0.0 <= self.phi <= 1.0:
            raise ValueError(f"phi is a mixing weight in [0, 1], got {phi}")
        self.schedule = schedule

    def __call__(self, x_t, t):
        if self.s == 1.0:  # the guided prediction is the conditional one: nothing to rescale
            return super().__call__(x_t, t)
        eps_cond, eps_uncond = cfg_pair(self.net, x_t, t, self.y, self.null_class)
        eps_cfg = eps_uncond + self.s * (eps_cond - eps_uncond)
        if self.schedule is None:
            return rescale_guidance(eps_cfg, eps_cond, self.phi)
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        alpha_bar = at(self.schedule.alpha_bars.to(x_t.device), t, x_t)  # (B, 1, ..., 1)
        x0_cond = (x_t - (1 - alpha_bar).sqrt() * eps_cond) / alpha_bar.sqrt()
        x0_cfg = (x_t - (1 - alpha_bar).sqrt() * eps_cfg) / alpha_bar.sqrt()
        x0 = rescale_guidance(x0_cfg, x0_cond, self.phi)
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()  # back to eps


def rescaled_classifier_free(net, y, s, phi=0.7, null_class=None, schedule=None):
    """Return the rescaled classifier-free guided model callable; see :class:`RescaledClassifierFree`."""
    return RescaledClassifierFree(net, y, s, phi, null_class, schedule)


class IntervalClassifierFree(ClassifierFree):
    """Classifier-free guidance on an interval of noise levels only (Kynkaanniemi et al., 2024):
    scale ``s`` where sigma_lo < sigma_t <= sigma_hi, the plain conditional model (s = 1, one pass)
    elsewhere. sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) is the noise level of x_t / sqrt(alpha_bar_t)
    (EDM's sigma, Karras et al., 2022), so the interval is given in the paper's units. Outside the
    interval each step costs one pass instead of two."""

    def __init__(self, net, y, s, schedule, sigma_lo=0.0, sigma_hi=math.inf, null_class=None):
        super().__init__(net, y, s, null_class)
        sigma_lo, sigma_hi = float(sigma_lo), float(sigma_hi)
        if not (0.0 <= sigma_lo < sigma_hi):  # also refuses NaN
            raise ValueError(f"need 0 <= sigma_lo < sigma_hi, got sigma_lo={sigma_lo}, sigma_hi={sigma_hi}")
        self.schedule, self.sigma_lo, self.sigma_hi = schedule, sigma_lo, sigma_hi
        alpha_bar = schedule.alpha_bars.double()
        self.sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()  # (T,) float64

    def guided(self, t):
        """A (B,) bool tensor: is guidance on at each timestep in ``t``?"""
        sigma = self.sigmas.to(torch.as_tensor(t).device)[torch.as_tensor(t).long()]
        return (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)

    def __call__(self, x_t, t):
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).expand(B)
        on = self.guided(t)
        if on.all():
            return super().__call__(x_t, t)
        y = _labels(self.y, B, x_t.device)
        eps_cond = self.net(x_t, t, y)
        if not on.any():
            return eps_cond
        eps_guided = super().__call__(x_t, t)  # a batch with timesteps on both sides: compute both
        return torch.where(on.view(B, *([1] * (x_t.ndim - 1))), eps_guided, eps_cond)


def interval_classifier_free(net, y, s, schedule, sigma_lo=0.0, sigma_hi=math.inf, null_class=None):
    """Return the interval-guided model callable; see :class:`IntervalClassifierFree`."""
    return IntervalClassifierFree(net, y, s, schedule, sigma_lo, sigma_hi, null_class)


# ----------------------------------------------------------------------------------------------
# Classifier guidance, mean-shift form (Dhariwal & Nichol, 2021, Algorithm 1), for ancestral sampling
# ----------------------------------------------------------------------------------------------

def classifier_log_prob_grad(classifier, x_t, t, y):
    """grad_{x_t} log p_phi(y | x_t, t), one gradient per sample: a detached tensor of x_t's shape.

    ``classifier(x_t, t) -> logits (B, classes)`` is noise-aware and takes the **original** timestep t in
    0..T-1 (an int or a (B,) tensor), the one the sampler denoises, never a step index. log p is the
    log-softmax of the logits (not the logits themselves: their gradient lacks the -grad logsumexp term).
    Summing the selected log-probabilities over the batch before differentiating gives each sample's own
    gradient, because sample i's log p depends on x_t[i] alone (GroupNorm, no BatchNorm).
    """
    B = x_t.shape[0]
    y = _labels(y, B, x_t.device)
    t = torch.as_tensor(t, device=x_t.device).expand(B)
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)
        log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (B, classes)
        if log_probs.ndim != 2 or log_probs.shape[0] != B:
            raise ValueError(f"classifier(x_t, t) must return logits of shape ({B}, classes), "
                             f"got {tuple(log_probs.shape)}")
        if y.max() >= log_probs.shape[1] or y.min() < 0:
            raise ValueError(f"labels must be in 0..{log_probs.shape[1] - 1} for this classifier, got {y.tolist()}")
        selected = log_probs[torch.arange(B, device=x.device), y].sum()
        (grad,) = torch.autograd.grad(selected, x)
    return grad.detach()


def ddpm_variance(t, t_prev, schedule):
    """Sigma_t of the ancestral step x_t -> x_{t_prev} ("fixed small", Ho et al., 2020, eq. 7):
    (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev), a float; 0 at t_prev = -1.
    The same variance :func:`course_lib.samplers.ddpm_step` draws its noise with."""
    from .samplers import _alpha_bar, _check_step_t

    t, t_prev = _check_step_t(t, t_prev, schedule, "ddpm_variance")
    if t_prev < 0:
        return 0.0
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    return (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)


def classifier_mean_shift_step(x_t, eps, grad, t, t_prev, schedule, s, noise=None, generator=None, clip_x0=False):
    """One classifier-guided ancestral step (Dhariwal & Nichol, 2021, Algorithm 1):

        mu, Sigma = posterior mean and variance of the DDPM step   (:func:`~course_lib.samplers.ddpm_step`)
        x_{t_prev} ~ N(mu + s * Sigma * grad_{x_t} log p_phi(y | x_t), Sigma)

    ``grad`` is grad_{x_t} log p_phi(y | x_t, t) (:func:`classifier_log_prob_grad`, at x_t and the original
    t). ``s`` is the classifier scale: p(y | x_t)^s, s = 0 is no guidance. At the last step (t_prev = -1)
    Sigma = 0, so the shift vanishes with the noise. ``noise``/``generator``/``clip_x0`` as in ddpm_step.
    """
    s = _finite("s", s)
    if grad.shape != x_t.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but x_t has {tuple(x_t.shape)}: pass "
                         "grad_{x_t} log p(y | x_t), one gradient per sample")
    from .samplers import ddpm_step

    x_prev = ddpm_step(x_t, eps, t, t_prev, schedule, noise=noise, generator=generator, clip_x0=clip_x0)  # mu + sigma z
    return x_prev + s * ddpm_variance(t, t_prev, schedule) * grad  # + s Sigma grad


def classifier_mean_shift_sample(model, classifier, y, s, shape, schedule, steps=None, generator=None, clip_x0=False,
                                 callback=None, device=None, x_T=None):
    """Ancestral sampling guided by a noise-aware classifier in the mean-shift form (Dhariwal & Nichol, 2021,
    Algorithm 1): every step of :func:`~course_lib.samplers.ddpm_sample` with its mean moved by
    s * Sigma_t * grad_{x_t} log p_phi(y | x_t, t) (:func:`classifier_mean_shift_step`).

    ``model(x_t, t) -> eps`` is an **unconditional** model callable (for a class-conditional network,
    :func:`unconditional`); ``classifier(x_t, t) -> logits`` is called at the sampler's original timestep
    t in 0..T-1, also when ``steps < T`` strides through them. ``y``: an int or a (B,) tensor of labels.
    ``steps``, ``generator``, ``clip_x0``, ``callback``, ``device``, ``x_T`` as in ``ddpm_sample``.

    Against the eps form (:func:`classifier_guided`, Algorithm 2) run through the same ancestral step
    (no clipping): that one moves the mean by s * beta_t / sqrt(alpha_t) * grad, this one by
    s * Sigma_t * grad with Sigma_t = beta_t (1 - alpha_bar_prev) / (1 - alpha_bar_t). The ratio
    sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) is 1 - O(beta) except for the last few, nearly
    clean steps, so the two forms agree to first order in the step size (with strides, beta_t is
    1 - alpha_bar_t / alpha_bar_prev).
    """
    from .samplers import _sample_loop, ddim_timesteps

    s = _finite("s", s)
    B = shape[0] if x_T is None else x_T.shape[0]
    _labels(y, B, "cpu")  # a wrong label shape fails here, before any sampling
    timesteps = ddim_timesteps(schedule.T, schedule.T if steps is None else steps, "leading")

    def step(x, eps, t, t_prev):
        grad = classifier_log_prob_grad(classifier, x, t, y) if s != 0 else torch.zeros_like(x)
        return classifier_mean_shift_step(x, eps, grad, t, t_prev, schedule, s, generator=generator, clip_x0=clip_x0)

    try:
        return _sample_loop(model, shape, schedule, timesteps, step, generator, callback, device, x_T)
    except TypeError as err:
        if "positional argument" in str(err):
            raise ValueError(f"model(x_t, t) failed ({err}): classifier guidance needs an unconditional model "
                             "callable; for a class-conditional network pass guidance.unconditional(net)") from err
        raise


def mixture_classifier(mixture, schedule):
    """The exact noise-aware classifier of a labelled Gaussian mixture, the label of a point being its
    component: a callable ``classifier(x_t, t) -> logits (B, K)`` with

        logits_k = log w_k + log N(x_t; sqrt(alpha_bar_t) mu_k, (alpha_bar_t s_k^2 + 1 - alpha_bar_t) I),

    so log_softmax(logits) = log p(y = k | x_t) exactly (Bayes' rule on the noised mixture,
    ``mixture.noised(alpha_bar_t)``). Its gradient is grad log p(y | x_t) = score_y(x_t) - score(x_t),
    the class's score minus the mixture's. ``t``: an int or a (B,) tensor in 0..T-1.
    """
    from .schedules import check_t
    from .score import GaussianMixture, _component_log_probs

    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    alpha_bar = torch.cumprod(1 - schedule.betas.double(), dim=0)  # (T,) float64

    def classifier(x_t, t):
        mixture._check_x(x_t)
        t = check_t(t, schedule.T).to(x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        ab = at(alpha_bar, t, x_t.double())  # (B, 1)
        means = ab.sqrt().unsqueeze(-1) * mixture.means.to(x_t.device)  # (B, K, D)
        variances = ab * mixture.stds.to(x_t.device) ** 2 + (1 - ab)  # (B, K)
        return _component_log_probs(x_t, means, variances, mixture.weights.to(x_t.device))  # (B, K) float64

    return classifier
