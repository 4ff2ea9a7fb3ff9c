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
