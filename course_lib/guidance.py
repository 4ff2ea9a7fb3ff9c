"""Guidance as wrappers: each takes a network and returns a new model callable ``(x_t, t) -> eps``
that any sampler in :mod:`course_lib.samplers` accepts unchanged.
"""

import torch

from .schedules import at


class ClassifierFree:
    """Classifier-free guidance (Ho & Salimans, 2022, eq. 6), written with w = 1 meaning "plain conditional":

        eps_guided = eps(x_t, null) + w * (eps(x_t, y) - eps(x_t, null))

    w = 0 is the unconditional model, w = 1 the conditional one, w > 1 pushes samples towards
    the class (sharper, less diverse). Ho & Salimans write (1 + w') eps_cond - w' eps_uncond,
    i.e. w = 1 + w'. Both passes run as one batch of size 2B.

    ``model(x, t, y)`` is a class-conditional network trained with label dropout, so that the
    label ``null_class`` means "no label".
    """

    def __init__(self, model, y, w, null_class):
        self.model, self.y, self.w, self.null_class = model, torch.as_tensor(y), float(w), int(null_class)

    def __call__(self, x_t, t):
        B = x_t.shape[0]
        y = self.y.to(x_t.device).expand(B) if self.y.ndim == 0 else self.y.to(x_t.device)
        if y.shape != (B,):
            raise ValueError(f"labels have shape {tuple(y.shape)} but the batch has {B} images")
        t = torch.as_tensor(t, device=x_t.device).expand(B)
        null = torch.full_like(y, self.null_class)
        # one forward pass over [conditional; unconditional]
        eps = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, H, W)
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + self.w * (eps_cond - eps_uncond)


def classifier_free(model, y, w, null_class):
    """Return the classifier-free guided model callable; see :class:`ClassifierFree`."""
    return ClassifierFree(model, y, w, null_class)


class ClassifierGuided:
    """Classifier guidance (Dhariwal & Nichol, 2021, Algorithm 2 / eq. 14 for DDIM):

        eps_guided = eps(x_t) - scale * sqrt(1 - alpha_bar_t) * grad_{x_t} log p_phi(y | x_t, t)

    ``classifier(x_t, t) -> logits`` must be trained on noised images (it sees x_t, not x_0).
    """

    def __init__(self, model, classifier, y, scale, schedule):
        self.model, self.classifier = model, classifier
        self.y, self.scale, self.schedule = torch.as_tensor(y), float(scale), schedule

    def __call__(self, x_t, t):
        B = x_t.shape[0]
        y = self.y.to(x_t.device).expand(B) if self.y.ndim == 0 else self.y.to(x_t.device)
        t = torch.as_tensor(t, device=x_t.device).expand(B)
        eps = self.model(x_t, t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x, t), dim=-1)  # (B, classes)
            selected = log_probs[torch.arange(B, device=x.device), y].sum()
            grad = torch.autograd.grad(selected, x)[0]
        return eps - self.scale * (1 - at(self.schedule.alpha_bars, t, x_t)).sqrt() * grad


def classifier_guided(model, classifier, y, scale, schedule):
    """Return the classifier-guided model callable; see :class:`ClassifierGuided`."""
    return ClassifierGuided(model, classifier, y, scale, schedule)
