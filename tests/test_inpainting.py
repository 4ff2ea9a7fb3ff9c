"""course_lib.inpainting: the known region pasted noised to the level it joins and exactly at the end, RePaint's
visiting order against diffusers 0.42.1, the equivalences (all-zero mask = ddim_sample, one sample = replace),
the network-evaluation counts, and loud errors. Models are analytic (exact eps of Gaussians): no training."""

import math

import pytest
import torch

from course_lib.inpainting import (METHODS, InpaintStep, inpaint, inpaint_nfe, noised_known, repaint_timesteps,
                                   undo_step)
from course_lib.samplers import ddim_sample, ddim_timesteps
from course_lib.schedules import make_schedule
from course_lib.score import GaussianMixture, exact_eps

SCHEDULE = make_schedule("linear", 1000)


def shared_gaussian_eps(schedule, mu=0.0, r=1.0, s=0.1):
    """Exact eps for images x_0 = mu + r u + s w (u ~ N(0, 1) shared by all pixels of an image, w ~ N(0, I)):
    x_t ~ N(sqrt(ab) mu, a I + b 1 1^T) with a = ab s^2 + 1 - ab, b = ab r^2, and eps = sqrt(1 - ab) Sigma^-1
    (x_t - sqrt(ab) mu), Sigma^-1 by Sherman-Morrison. The pixels are correlated, so the known ones say a lot
    about the others: given k known pixels, each unknown one has mean mu + r^2 sum(x_k - mu) / (s^2 + k r^2)."""
    ab_all = schedule.alpha_bars64

    def model(x, t):
        ab = ab_all[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
        n = x[0].numel()
        a, b = ab * s**2 + 1 - ab, ab * r**2
        v = x - ab.sqrt() * mu
        v_sum = v.flatten(1).sum(1).reshape(ab.shape)  # (B, 1, 1, 1)
        return (1 - ab).sqrt() * (v - b * v_sum / (a + n * b)) / a

    return model


class Recorder:
    """Wraps a model; records every (x_t, t) it is called with."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return self.model(x, t)


def _setup(B=3, C=2, H=6, W=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_known = torch.rand((B, C, H, W), generator=g) * 2 - 1
    mask = (torch.rand((B, 1, H, W), generator=g) < 0.5).float()
    return x_known, mask


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


MODEL = shared_gaussian_eps(SCHEDULE)


# ------------------------------------------------------------------------------------------ visiting order

@pytest.mark.parametrize("steps, jump_length, jump_n_sample, T", [
    (250, 10, 10, 1000), (50, 5, 3, 1000), (20, 1, 1, 1000), (10, 10, 10, 1000), (100, 3, 7, 1000),
    (37, 4, 2, 1000), (7, 1, 5, 1000), (250, 10, 10, 250), (60, 7, 4, 500), (1, 1, 3, 1000),
])
def test_repaint_timesteps_match_diffusers(steps, jump_length, jump_n_sample, T):
    from diffusers import RePaintScheduler  # a test dependency: fail loudly if missing

    ref = RePaintScheduler(num_train_timesteps=T)
    ref.set_timesteps(steps, jump_length, jump_n_sample)
    ours = repaint_timesteps(steps, jump_length, jump_n_sample, T=T)
    assert ours.dtype == torch.long
    assert torch.equal(ours, ref.timesteps.long())


def test_repaint_timesteps_shape():
    """Consecutive entries differ by one grid step; it starts at the top of the grid and ends at 0; with one
    sample per stretch it is the plain leading grid."""
    order = repaint_timesteps(50, 5, 3)
    assert order[0] == 49 * 20 and order[-1] == 0
    assert set((order[1:] - order[:-1]).abs().tolist()) == {20}
    assert torch.equal(repaint_timesteps(50, 5, 1), ddim_timesteps(1000, 50, "leading"))
    assert torch.equal(repaint_timesteps(50, 50, 9), ddim_timesteps(1000, 50, "leading"))


def test_paper_setting_costs_9_64_times():
    """The paper's setting, 250 steps with jump_length = jump_n_sample = 10: the visiting order has 4,570
    entries; with the clean end appended, 4,570 transitions, of which 2,410 go down (network evaluations) and
    2,160 up (jumps, no network). 2,410 / 250 = 9.64: RePaint costs 9.64 x the plain 250-step sampler.
    Check: 24 jump points (grid indices 0, 10, ..., 230) x 9 extra passes x 10 steps = 2,160 extra evaluations."""
    order = repaint_timesteps(250, 10, 10, T=250)
    assert len(order) == 4570
    levels = order.tolist() + [-1]
    down = sum(b < a for a, b in zip(levels[:-1], levels[1:]))
    assert down == 2410 == 250 + 24 * 9 * 10
    assert len(levels) - 1 - down == 2160
    assert inpaint_nfe(250, "repaint", 10, 10) == 2410
    assert inpaint_nfe(250, "repaint", 10, 10) / 250 == pytest.approx(9.64)
    assert inpaint_nfe(250, "replace") == inpaint_nfe(250, "clean") == 250


@pytest.mark.parametrize("method, kw", [("replace", {}), ("clean", {}), ("repaint", dict(jump_length=5, jump_n_sample=3)),
                                        ("repaint", dict(jump_length=1, jump_n_sample=2))])
def test_network_evaluations_counted(method, kw):
    x_known, mask = _setup()
    model = Recorder(MODEL)
    steps_seen = []
    inpaint(model, x_known, mask, SCHEDULE, steps=20, method=method, generator=_gen(), callback=steps_seen.append, **kw)
    expected = inpaint_nfe(20, method, **kw)
    assert len(model.calls) == expected == steps_seen[-1].nfe
    if method == "repaint":
        assert expected == 20 + kw["jump_length"] * (kw["jump_n_sample"] - 1) * len(range(0, 20 - kw["jump_length"], kw["jump_length"]))
    # the callback sees the visiting order, then the clean end; jumps carry no x0_hat
    order = (repaint_timesteps(20, **kw) if method == "repaint" else ddim_timesteps(1000, 20)).tolist() + [-1]
    assert [s.t for s in steps_seen] == order[:-1] and [s.t_next for s in steps_seen] == order[1:]
    assert all(isinstance(s, InpaintStep) and (s.x0_hat is None) == (s.t_next > s.t) for s in steps_seen)
    assert [t[0].item() for _, t in model.calls] == [s.t for s in steps_seen if s.t_next < s.t]


# ------------------------------------------------------------------------------------------ the known region

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask_shape", ["1,1", "B,1", "B,C", "bool"])
def test_output_equals_x_known_exactly_on_the_mask(method, mask_shape):
    x_known, mask = _setup()
    B, C = x_known.shape[:2]
    mask = {"1,1": mask[:1], "B,1": mask, "B,C": mask.expand(B, C, -1, -1).clone(), "bool": mask.bool()}[mask_shape]
    x_in = x_known.clone()
    x_in[~mask.bool().expand_as(x_in)] = float("nan")  # pixels outside the mask are never read
    out = inpaint(MODEL, x_in, mask, SCHEDULE, steps=10, method=method, jump_length=3, jump_n_sample=2,
                  generator=_gen(), clip_x0=True)
    keep = mask.bool().expand_as(out)
    assert out.shape == x_known.shape and torch.isfinite(out).all()
    assert torch.equal(out[keep], x_known[keep])
    assert not torch.equal(out[~keep], torch.zeros_like(out[~keep]))


@pytest.mark.parametrize("method", METHODS)
def test_all_ones_mask_returns_x_known(method):
    x_known, _ = _setup()
    out = inpaint(MODEL, x_known, torch.ones(1, 1, 6, 5), SCHEDULE, steps=8, method=method, jump_length=2,
                  jump_n_sample=3, generator=_gen())
    assert torch.equal(out, x_known)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_all_zeros_mask_replace_equals_ddim_sample(eta, clip_x0):
    """With nothing known, "replace" is ddim_sample, draw for draw, from the same generator."""
    x_known, _ = _setup()
    zeros = torch.zeros(1, 1, 6, 5)
    ours = inpaint(MODEL, x_known, zeros, SCHEDULE, steps=15, eta=eta, generator=_gen(5), clip_x0=clip_x0)
    ref = ddim_sample(MODEL, x_known.shape, SCHEDULE, steps=15, eta=eta, generator=_gen(5), clip_x0=clip_x0)
    assert torch.equal(ours, ref)
    x_T = torch.randn(x_known.shape, generator=_gen(6))
    ours = inpaint(MODEL, x_known, zeros, SCHEDULE, steps=15, eta=eta, generator=_gen(7), x_T=x_T)
    ref = ddim_sample(MODEL, x_known.shape, SCHEDULE, steps=15, eta=eta, generator=_gen(7), x_T=x_T)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_repaint_with_one_sample_equals_replace(eta):
    x_known, mask = _setup()
    replace = inpaint(MODEL, x_known, mask, SCHEDULE, steps=12, eta=eta, generator=_gen(3))
    for jump_length, jump_n_sample in [(4, 1), (1, 1), (12, 5)]:  # no jump: one sample, or one stretch of all 12
        repaint = inpaint(MODEL, x_known, mask, SCHEDULE, steps=12, method="repaint", eta=eta, generator=_gen(3),
                          jump_length=jump_length, jump_n_sample=jump_n_sample)
        assert torch.equal(repaint, replace)
    resampled = inpaint(MODEL, x_known, mask, SCHEDULE, steps=12, method="repaint", eta=eta, generator=_gen(3),
                        jump_length=4, jump_n_sample=2)
    assert not torch.equal(resampled, replace)


@pytest.mark.parametrize("method, kw", [("replace", {}), ("repaint", dict(jump_length=4, jump_n_sample=3))])
def test_known_region_is_noised_to_the_level_reached(method, kw):
    """After every transition t -> t_next (down or up), the known pixels are sqrt(ab) x_known + sqrt(1 - ab) z
    with ab = alpha_bar_{t_next}: the standardised residual z has mean 0 and variance 1 over 1,024 known pixels,
    and after every denoising step it is a FRESH draw (uncorrelated with the one before). The model's inputs
    carry the same level (each input is the previous transition's output)."""
    g = torch.Generator().manual_seed(11)
    x_known = torch.rand((2, 1, 32, 32), generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1
    keep = mask.bool().expand_as(x_known)
    model = Recorder(shared_gaussian_eps(SCHEDULE, r=0.5, s=0.3))
    steps = []
    out = inpaint(model, x_known, mask, SCHEDULE, steps=25, method=method, generator=_gen(), callback=steps.append, **kw)
    previous = None
    for s in steps:
        if s.t_next < 0:
            assert torch.equal(s.x_next[keep], x_known[keep])  # the clean end: exactly x_known
            continue
        ab = SCHEDULE.alpha_bars64[s.t_next].item()
        z = ((s.x_next.double() - math.sqrt(ab) * x_known.double()) / math.sqrt(1 - ab))[keep]
        assert abs(z.mean().item()) < 0.2, (s.t_next, z.mean().item())
        assert abs(z.var().item() - 1) < 0.25, (s.t_next, z.var().item())
        if previous is not None and s.t_next < s.t:  # a denoising step pastes a fresh draw
            assert abs(torch.corrcoef(torch.stack([z, previous]))[0, 1].item()) < 0.2
        previous = z
    assert torch.equal(out[keep], x_known[keep])
    # the model's inputs: x_T first, then each transition's output
    inputs_after_first = [x for x, _ in model.calls[1:]]
    outputs_before_eval = [s.x_next for i, s in enumerate(steps[:-1]) if steps[i + 1].t_next < steps[i + 1].t]
    assert all(torch.equal(a, b) for a, b in zip(inputs_after_first, outputs_before_eval))


def test_clean_method_shows_the_model_a_clean_region():
    """The mistake the lesson shows: with "clean", the model sees the clean known pixels at every t."""
    x_known, mask = _setup()
    model = Recorder(MODEL)
    inpaint(model, x_known, mask, SCHEDULE, steps=10, method="clean", generator=_gen())
    keep = mask.bool().expand_as(x_known)
    assert model.calls[1][1][0] == 800  # already at the second step, t = 800 (alpha_bar = 0.0007)
    for x, _ in model.calls[1:]:
        assert torch.equal(x[keep], x_known[keep])


def test_repaint_harmonises_where_replace_and_clean_do_not():
    """Correlated Gaussian images (every pixel shares one latent): the exact conditional mean of an unknown
    pixel given 8 known pixels at 0.8 is 0.8 * 8 / (8 + 0.01) = 0.799. Measured over 2,000 images with DDPM
    steps (50): "replace" 0.751 (it decides the unknown part while the known one is still mostly noise),
    "clean" 0.861, RePaint (j = 5, r = 5: 230 evaluations) 0.795. Each mean has a standard error of about 0.002."""
    mu, r, s, k = 0.0, 1.0, 0.1, 8
    model = shared_gaussian_eps(SCHEDULE, mu, r, s)
    x_known = torch.full((2000, 1, 4, 4), 0.8)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # 8 known pixels, 8 to fill in
    exact = mu + r**2 * k * (0.8 - mu) / (s**2 + k * r**2)

    def error(method, **kw):
        out = inpaint(model, x_known, mask, SCHEDULE, steps=50, method=method, generator=_gen(21), **kw)
        return abs(out[..., 2:].mean().item() - exact)

    assert error("repaint", jump_length=5, jump_n_sample=5) < 0.015
    assert error("replace") > 0.03
    assert error("clean") > 0.03


def test_points_with_a_gaussian_mixture():
    """(B, D) points work too: know the first coordinate, fill in the second."""
    mix = GaussianMixture([[-2.0, -2.0], [2.0, 2.0]], [0.3, 0.3], [0.5, 0.5])
    x_known = torch.tensor([[-2.0, 0.0], [2.0, 0.0]]).repeat(100, 1)
    mask = torch.tensor([[1.0, 0.0]])
    out = inpaint(exact_eps(mix, SCHEDULE), x_known, mask, SCHEDULE, steps=25, method="repaint", jump_length=5,
                  jump_n_sample=4, generator=_gen())
    assert torch.equal(out[:, 0], x_known[:, 0])
    # the second coordinate follows the first: the component is decided by the known coordinate
    assert (out[0::2, 1] < 0).float().mean() > 0.9 and (out[1::2, 1] > 0).float().mean() > 0.9


# ------------------------------------------------------------------------------------------ the two steps

def test_noised_known():
    x = torch.rand((4, 1, 8, 8), generator=_gen()) * 2 - 1
    z = torch.randn(x.shape, generator=_gen(2))
    ab = SCHEDULE.alpha_bars64[300].item()
    assert torch.allclose(noised_known(x, 300, SCHEDULE, noise=z), math.sqrt(ab) * x + math.sqrt(1 - ab) * z)
    assert torch.equal(noised_known(x, -1, SCHEDULE, generator=_gen()), x)
    a, b = noised_known(x, 300, SCHEDULE, _gen(3)), noised_known(x, 300, SCHEDULE, _gen(3))
    assert torch.equal(a, b)
    g = _gen(3)
    assert not torch.equal(noised_known(x, 300, SCHEDULE, g), noised_known(x, 300, SCHEDULE, g))


def test_undo_step_one_step_and_product():
    x = torch.randn((2, 1, 4, 4), generator=_gen(), dtype=torch.float64)
    z = torch.randn(x.shape, generator=_gen(2), dtype=torch.float64)
    beta = SCHEDULE.betas.double()[101].item()
    one = undo_step(x, 100, 101, SCHEDULE, noise=z)
    assert torch.allclose(one, math.sqrt(1 - beta) * x + math.sqrt(beta) * z)
    # a jump over 20 steps = 20 one-step jumps composed: mean coefficient and variance agree
    betas = SCHEDULE.betas.double()[101:121]
    ratio = (SCHEDULE.alpha_bars64[120] / SCHEDULE.alpha_bars64[100]).item()
    assert torch.sqrt(1 - betas).prod().item() == pytest.approx(math.sqrt(ratio), rel=1e-12)
    var = 0.0
    for b in betas.tolist():
        var = (1 - b) * var + b  # the variance added by each step, carried through the later ones
    assert var == pytest.approx(1 - ratio, rel=1e-10)
    many = undo_step(x, 100, 120, SCHEDULE, noise=z)
    assert torch.allclose(many, math.sqrt(ratio) * x + math.sqrt(1 - ratio) * z)
    # statistically: 20,000 draws from the same x
    x0 = torch.full((20000,), 0.7, dtype=torch.float64)
    y = undo_step(x0, 100, 120, SCHEDULE, generator=_gen(4))
    assert y.mean().item() == pytest.approx(0.7 * math.sqrt(ratio), abs=0.01)
    assert y.var().item() == pytest.approx(1 - ratio, rel=0.05)
    # from the clean end it is q_sample
    assert torch.allclose(undo_step(x, -1, 300, SCHEDULE, noise=z), noised_known(x, 300, SCHEDULE, noise=z))


# ------------------------------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("change, words", [
    (dict(keep_mask=torch.ones(1, 1, 6, 4)), r"valid mask shapes are \(B or 1, C or 1, H, W\) = \(3 or 1, 2 or 1, 6, 5\)"),
    (dict(keep_mask=torch.ones(2, 1, 6, 5)), "valid mask shapes"),
    (dict(keep_mask=torch.ones(1, 3, 6, 5)), "valid mask shapes"),
    (dict(keep_mask=torch.ones(6, 5)), "valid mask shapes"),
    (dict(keep_mask=torch.full((1, 1, 6, 5), 0.5)), "only 0 and 1.*found 0.5.*threshold"),
    (dict(keep_mask=torch.full((1, 1, 6, 5), float("nan"))), "only 0 and 1.*found nan"),
    (dict(keep_mask=torch.full((1, 1, 6, 5), 2)), "only 0 and 1"),
    (dict(keep_mask=[[1, 0]]), "keep_mask must be a tensor"),
    (dict(x_known=torch.zeros(2, 6, 5)), r"\(B, C, H, W\).*x_known\[None\]"),
    (dict(x_known=torch.zeros(3, 2, 6, 5, dtype=torch.long)), "float tensor"),
    (dict(x_known=torch.full((3, 2, 6, 5), float("nan"))), "NaN or inf values where keep_mask is 1"),
    (dict(method="RePaint"), "unknown inpainting method 'RePaint'; valid methods are 'replace', 'repaint', 'clean'"),
    (dict(method="repaint", jump_length=0), "jump_length must be an integer in 1..10"),
    (dict(method="repaint", jump_length=11), "jump_length must be an integer in 1..10"),
    (dict(method="repaint", jump_n_sample=0), "jump_n_sample must be an integer in 1"),
    (dict(method="repaint", jump_length=2.0), "jump_length must be an integer"),
    (dict(steps=0), "steps must be an integer in 1..T = 1..1000"),
    (dict(steps=1001), "steps must be an integer in 1..T = 1..1000"),
    (dict(method="repaint", steps=1001), "steps must be an integer in 1..1000"),
    (dict(steps=10.0), "steps must be an integer"),
    (dict(eta=1.5), "eta must be a number in"),
    (dict(x_T=torch.zeros(1, 2, 6, 5)), "x_T has shape"),
])
def test_bad_inputs_raise(change, words):
    x_known, mask = _setup()
    kwargs = dict(x_known=x_known, keep_mask=mask, steps=10, generator=_gen())
    kwargs.update(change)
    with pytest.raises(ValueError, match=words):
        inpaint(MODEL, kwargs.pop("x_known"), kwargs.pop("keep_mask"), SCHEDULE, **kwargs)


def test_bad_inputs_of_the_helpers_raise():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="need t_prev < t"):
        undo_step(x, 10, 5, SCHEDULE)
    with pytest.raises(ValueError, match=r"t must be an integer level in -1..999"):
        noised_known(x, 1000, SCHEDULE)
    with pytest.raises(ValueError, match=r"t_prev must be an integer level in -1..999"):
        undo_step(x, -2, 5, SCHEDULE)
    with pytest.raises(ValueError, match="valid methods"):
        inpaint_nfe(10, "ddim")
    with pytest.raises(ValueError, match="jump_length must be an integer in 1..10"):
        repaint_timesteps(10, 20, 2)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        repaint_timesteps(10, 2, 2, T=0)
    with pytest.raises(TypeError, match="Schedule"):
        inpaint(MODEL, x, x, "linear")
