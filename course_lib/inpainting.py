"""Inpainting with an unconditional eps-model: noised replacement and RePaint resampling.

Given an image ``x_known`` whose pixels are known where ``keep_mask`` is 1, sample the rest from the model's
prior, consistent with the known part. No retraining: only the sampling loop changes.

* ``method="replace"``: after every reverse step x_t -> x_{t_prev}, the known pixels are overwritten by
  x_known *noised to the level of the sample they join*, x_known q_sample'd at alpha_bar_{t_prev} with fresh
  noise (Lugmayr et al., 2022, eq. 8a; Song et al., 2021b, Sec. 5 "imputation"); the last step lands on the
  clean end, where the paste is exactly x_known.
* ``method="repaint"``: the same step, walked along RePaint's visiting order (:func:`repaint_timesteps`),
  which now and then jumps back up ``jump_length`` steps by the forward process (:func:`undo_step`) and
  denoises that stretch again, ``jump_n_sample`` times in all, so that the generated part has time to agree
  with the known part (Lugmayr et al., 2022, Sec. 4.2 "Resampling", Algorithm 1).
* ``method="clean"``: the popular-tutorial mistake, kept so that the lesson can show it: the CLEAN x_known is
  pasted at every step. The network then sees, at a large t, a sample that is pure noise in one place and a
  clean image in another, something it never saw in training, and the two parts do not join up.

Two known misprints in line 5 of the paper's Algorithm 1, which the code here does *not* follow (it follows the
paper's eq. 8a and the authors' code, github.com/andreas128/RePaint): line 5 prints
x^known_{t-1} = sqrt(alpha_bar_t) x_0 + (1 - alpha_bar_t) eps, but

* eq. 8a draws x^known_{t-1} from N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I): (1 - alpha_bar) is the VARIANCE,
  so the noise is scaled by sqrt(1 - alpha_bar) (diffusers' ``scheduling_repaint.py`` says so in a comment; its
  PR #10644 reverted a "fix" that had followed the printed line and degraded the results);
* x^known_{t-1} joins x^unknown_{t-1}, so its level is alpha_bar_{t-1}, that of the step just reached, not
  alpha_bar_t (andreas128/RePaint issue #17; the authors' code pastes at the level of the sample it joins).

The jump back up of line 10 is a draw from the forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1},
beta_t I) (eq. 1): beta_t is a variance, the noise is scaled by sqrt(beta_t), x_t = sqrt(1 - beta_t) x_{t-1} +
sqrt(beta_t) z. On a strided grid of ``steps`` < T timesteps a jump from t' up to the next grid point t covers
several steps of eq. 1 at once; their product is x_t = sqrt(alpha_bar_t / alpha_bar_t') x_t' +
sqrt(1 - alpha_bar_t / alpha_bar_t') z, which for t' = t - 1 is the one-step form (:func:`undo_step`).

The reverse steps are the course's :func:`~course_lib.samplers.ddim_step` with ``eta`` (eta = 1, the default
here, is DDPM's ancestral step as in the paper; eta = 0 is deterministic DDIM) on the grid
``ddim_timesteps(T, steps, "leading")``, the grid of ``diffusers``' ``RePaintScheduler``.
"""

import math
from typing import NamedTuple

import torch

from .diffusion import _noise_like, predict_x0
from .samplers import _alpha_bar, _check_eta, ddim_step, ddim_timesteps
from .schedules import Schedule

METHODS = ("replace", "repaint", "clean")


class InpaintStep(NamedTuple):
    """What :func:`inpaint` hands to ``callback`` after each transition of its loop."""

    i: int  # transition index, 0 for the first
    t: int  # the level of the input x_t
    t_next: int  # the level reached: below t for a denoising step (-1: the clean end), above t for a jump back up
    x_t: torch.Tensor  # the input of this transition
    x0_hat: torch.Tensor | None  # the model's guess of x_0 (None for a jump: no network evaluation)
    x_next: torch.Tensor  # the output, known region pasted in
    nfe: int  # network evaluations so far, this one included


def _check_int(value, name, lo, hi, why):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi} ({why}), got {value!r}")
    return value


def repaint_timesteps(steps, jump_length=10, jump_n_sample=10, T=1000):
    """RePaint's visiting order (Lugmayr et al., 2022, Sec. 4.2 and Fig. 9): a (N,) long tensor of timesteps.

    Walk down a grid of ``steps`` timesteps; every ``jump_length`` grid steps (at grid indices 0, jump_length,
    2 jump_length, ... below steps - jump_length) go back up ``jump_length`` steps and come down again, until
    that stretch has been denoised ``jump_n_sample`` times in all. Grid index i stands for timestep
    i * (T // steps) (the "leading" grid of :func:`~course_lib.samplers.ddim_timesteps`).

    Equal to ``diffusers``' ``RePaintScheduler(num_train_timesteps=T).set_timesteps(steps, jump_length,
    jump_n_sample).timesteps`` (0.42.1; the tests check it) and to the authors' ``get_schedule_jump`` without its
    trailing -1. :func:`inpaint` walks the list followed by -1 (the clean end): consecutive entries going down
    are a denoising step, going up a jump back (:func:`undo_step`). Each entry is the level of the sample, as in
    the authors' code; ``diffusers``' pipeline reads the same list shifted by one grid step (it evaluates the model
    at each decreasing entry and jumps up from the sample below it, including one jump from the clean image).

    ``jump_n_sample = 1`` (or ``jump_length = steps``) makes no jump: the plain grid, ``steps`` entries. The list
    has ``steps + 2 * jump_length * (jump_n_sample - 1) * len(range(0, steps - jump_length, jump_length))``
    entries; the decreasing transitions, the network evaluations, are ``steps + jump_length * (jump_n_sample - 1)
    * len(range(0, steps - jump_length, jump_length))`` (:func:`inpaint_nfe`).
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer number of diffusion steps, got {T!r}")
    _check_int(steps, "steps", 1, T, f"the number of grid timesteps, at most T = {T}")
    _check_int(jump_length, "jump_length", 1, steps, f"grid steps per jump back up; at most steps = {steps}")
    _check_int(jump_n_sample, "jump_n_sample", 1, 10**6, "how many times each stretch is denoised; 1: no jumps")
    # jumps[j]: how many jumps back up are still to be made from grid index j
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    order = []
    i = steps
    while i >= 1:
        i -= 1  # one step down
        order.append(i)
        if jumps.get(i, 0) > 0:  # a jump back up, jump_length grid steps one at a time
            jumps[i] -= 1
            for _ in range(jump_length):
                i += 1
                order.append(i)
    return torch.tensor(order, dtype=torch.long) * (T // steps)


def inpaint_nfe(steps, method="replace", jump_length=10, jump_n_sample=10):
    """Network evaluations that :func:`inpaint` makes: ``steps`` for "replace" and "clean"; for "repaint", the
    number of decreasing transitions of ``repaint_timesteps(...)`` followed by the clean end -1. At the paper's
    setting (250 steps, jump_length = 10, jump_n_sample = 10) that is 2,410 = 9.64 x 250."""
    _check_method(method)
    if method != "repaint":
        return _check_int(steps, "steps", 1, 10**9, "the number of grid timesteps")
    order = repaint_timesteps(steps, jump_length, jump_n_sample, T=steps).tolist() + [-1]
    return sum(b < a for a, b in zip(order[:-1], order[1:]))


def noised_known(x_known, t, schedule, generator=None, noise=None):
    """The known image at the level of step t: q_sample(x_known, t) (Ho et al., 2020, eq. 4; RePaint eq. 8a),

        sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) z,   z ~ N(0, I) drawn afresh with ``generator``
                                                               (or the given ``noise``),

    t in -1..T-1; at t = -1 (the clean end, alpha_bar = 1) the result is exactly x_known."""
    t = _check_level(t, schedule, "t")
    alpha_bar = _alpha_bar(schedule, t)
    z = _noise_like(x_known, noise, generator)
    return math.sqrt(alpha_bar) * x_known + math.sqrt(1 - alpha_bar) * z


def undo_step(x_prev, t_prev, t, schedule, generator=None, noise=None):
    """Jump back up from level t_prev to the noisier level t > t_prev by the forward process (RePaint,
    Algorithm 1 line 10; Ho et al., 2020, eq. 1 composed over the steps t_prev + 1 .. t):

        x_t = sqrt(alpha_bar_t / alpha_bar_prev) x_prev + sqrt(1 - alpha_bar_t / alpha_bar_prev) z,

    which for t = t_prev + 1 is sqrt(1 - beta_t) x_prev + sqrt(beta_t) z. The noise is scaled by a STANDARD
    DEVIATION, the square root of the variance 1 - alpha_bar_t / alpha_bar_prev. t_prev = -1 is the clean end.
    """
    t = _check_level(t, schedule, "t")
    t_prev = _check_level(t_prev, schedule, "t_prev")
    if not t_prev < t:
        raise ValueError(f"undo_step goes up, to a noisier level: need t_prev < t, got t_prev = {t_prev}, t = {t}")
    ratio = _alpha_bar(schedule, t) / _alpha_bar(schedule, t_prev)  # alpha_bar_t / alpha_bar_prev, float64
    z = _noise_like(x_prev, noise, generator)
    return math.sqrt(ratio) * x_prev + math.sqrt(1 - ratio) * z


@torch.no_grad()
def inpaint(model, x_known, keep_mask, schedule, steps=50, method="replace", jump_length=10, jump_n_sample=10,
            eta=1.0, generator=None, clip_x0=False, callback=None, x_T=None):
    """Fill in the pixels of ``x_known`` where ``keep_mask`` is 0, using an unconditional eps-model.

    ``model(x_t, t) -> eps``; ``x_known``: (B, C, H, W) images (or (B, D) points); only its pixels where
    ``keep_mask`` is 1 are read (the others may hold anything, NaN included). ``keep_mask``: 1 = known pixel,
    0 = to fill in, only 0/1 values (bool or numbers), shape (B or 1, C or 1, H, W) (points: (B or 1, D)).
    ``method``: "replace", "repaint" or "clean" (the mistake of pasting the clean image; see the module's
    docstring). ``jump_length`` and ``jump_n_sample`` are RePaint's j and r (used by "repaint" only; the paper
    uses 10 and 10 with 250 steps). ``eta``: the reverse step, ``ddim_step``'s eta (1: ancestral DDPM as in the
    paper; 0: deterministic DDIM). ``clip_x0`` as in every sampler (False by default; images pass True).
    ``x_T``: the starting noise (else drawn with ``generator``, like ``x_known``). ``callback(InpaintStep)`` after
    every transition. Returns x_0 of x_known's shape, equal to x_known exactly where keep_mask is 1.

    Network evaluations: :func:`inpaint_nfe` (``steps``, or about 9.6 x for RePaint at j = r = 10).

    The loop: one fresh z ~ N(0, I) per transition, drawn with ``generator``. A denoising step t -> t_next uses
    it twice, on disjoint pixels: as the step's noise for the unknown pixels, and as the noise of
    ``noised_known(x_known, t_next)`` for the known ones. A jump uses it for :func:`undo_step` on the whole image;
    the known region, forward-noised from its level, stays at the level of the sample. The draws are those of
    ``ddim_sample(model, x_known.shape, schedule, steps, eta=eta, generator=generator)``, so with an all-zero mask
    "replace" returns exactly what ``ddim_sample`` does, and "repaint" with ``jump_n_sample=1`` exactly what
    "replace" does.
    """
    known = _check_inputs(x_known, keep_mask)  # bool, broadcasts against x_known
    _check_method(method)
    eta = _check_eta(eta)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (schedules.make_schedule), got {type(schedule).__name__}")
    if method == "repaint":
        order = repaint_timesteps(steps, jump_length, jump_n_sample, schedule.T)
    else:
        order = ddim_timesteps(schedule.T, steps, "leading")
    levels = order.tolist() + [-1]  # the clean end last
    if x_T is None:
        x = _noise_like(x_known, None, generator)
    elif tuple(x_T.shape) != tuple(x_known.shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but must match x_known's {tuple(x_known.shape)}")
    else:
        x = x_T.to(x_known.device)

    nfe = 0
    for i, (t, t_next) in enumerate(zip(levels[:-1], levels[1:])):
        z = _noise_like(x, None, generator)  # (B, C, H, W), used once per pixel
        if t_next > t:
            # a jump back up (RePaint line 10, composed over the grid step): noise the whole sample forward
            x0_hat = None
            x_next = undo_step(x, t, t_next, schedule, noise=z)
        else:
            # a reverse step for the unknown pixels (eq. 12 of Song et al., 2021, with eta)
            t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
            eps = model(x, t_batch)
            nfe += 1
            x_step = ddim_step(x, eps, t, t_next, schedule, eta=eta, noise=z, clip_x0=clip_x0)
            # the known pixels noised to the level just reached, t_next, with noise scaled by sqrt(1 - alpha_bar)
            # (eq. 8a; the printed Algorithm 1 line 5 has alpha_bar_t and no square root: misprints), or clean
            # x_known for "clean", the mistake
            paste = x_known if method == "clean" else noised_known(x_known, t_next, schedule, noise=z)
            x_next = torch.where(known, paste, x_step)
            x0_hat = predict_x0(x, eps, t, schedule) if callback is not None else None
        if callback is not None:
            callback(InpaintStep(i, t, t_next, x, x0_hat, x_next, nfe))
        x = x_next
    # exactly x_known on the mask (the last paste already is, up to 0 * z; this makes it exact for any z)
    return torch.where(known, x_known, x)


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; valid methods are {', '.join(map(repr, METHODS))}")


def _check_level(t, schedule, name):
    """An int level in -1..T-1 (-1: the clean end)."""
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"{name} must be one timestep (an int), got a tensor of shape {tuple(t.shape)}")
        t = t.item()
    if isinstance(t, float) and t.is_integer():
        t = int(t)
    if isinstance(t, bool) or not isinstance(t, int) or not -1 <= t <= schedule.T - 1:
        raise ValueError(f"{name} must be an integer level in -1..{schedule.T - 1} (-1: the clean end), got {t!r}")
    return t


def _check_inputs(x_known, keep_mask):
    """Validate x_known and keep_mask; return the mask as a bool tensor on x_known's device."""
    if not isinstance(x_known, torch.Tensor) or x_known.ndim not in (2, 4) or not x_known.is_floating_point():
        got = tuple(x_known.shape) if isinstance(x_known, torch.Tensor) else type(x_known).__name__
        raise ValueError(f"x_known must be a float tensor of images (B, C, H, W) or points (B, D), got {got}"
                         + (": add the batch dimension, x_known[None]" if getattr(x_known, "ndim", 0) == 3 else ""))
    if not isinstance(keep_mask, torch.Tensor):
        raise ValueError(f"keep_mask must be a tensor (1 = known pixel, 0 = to fill in), got {type(keep_mask).__name__}")
    B, C, *rest = x_known.shape
    valid = (f"(B or 1, C or 1, H, W) = ({B} or 1, {C} or 1, {', '.join(map(str, rest))})" if rest
             else f"(B or 1, D) = ({B} or 1, {C})")
    ok = (keep_mask.ndim == x_known.ndim and keep_mask.shape[0] in (1, B)
          and (keep_mask.shape[1] in (1, C) if rest else keep_mask.shape[1] == C)
          and tuple(keep_mask.shape[2:]) == tuple(rest))
    if not ok:
        raise ValueError(f"keep_mask has shape {tuple(keep_mask.shape)}, but for x_known of shape "
                         f"{tuple(x_known.shape)} the valid mask shapes are {valid}")
    if keep_mask.dtype != torch.bool and not ((keep_mask == 0) | (keep_mask == 1)).all():  # NaN fails too
        bad = keep_mask[(keep_mask != 0) & (keep_mask != 1)].flatten()[0].item()
        raise ValueError(f"keep_mask must hold only 0 and 1 (1 = known pixel, 0 = to fill in), found {bad}: "
                         "threshold a soft mask first, e.g. (mask > 0.5).float()")
    known = keep_mask.to(device=x_known.device, dtype=torch.bool)
    if not torch.isfinite(torch.where(known, x_known, 0.0)).all():
        raise ValueError("x_known has NaN or inf values where keep_mask is 1 (known pixels must be finite)")
    return known
