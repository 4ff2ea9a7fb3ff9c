"""Lesson 07 additions to course_lib.guidance: the conventions, one batch of 2B, guidance rescale
(Lin et al., 2024) and interval guidance (Kynkaanniemi et al., 2024)."""

import math

import pytest
import torch

from course_lib import guidance, nets, samplers
from course_lib.schedules import make_schedule


class Recording(torch.nn.Module):
    """A fixed random conditional 2-D network that records the batch size and labels of each call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = nets.ConditionalMLPDenoiser(3, hidden=32, layers=2)
        self.null_class = self.inner.null_class
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((x.shape[0], y.clone()))
        return self.inner(x, t, y)


def _inputs(B=6, t=500):
    g = torch.Generator().manual_seed(1)
    return torch.randn((B, 2), generator=g), torch.full((B,), t), torch.randint(0, 3, (B,), generator=g)


def test_conventions_agree_on_the_guided_eps():
    g = torch.Generator().manual_seed(2)
    eps_c, eps_u = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)
    for value in (0.0, 0.3, 1.0, 4.0, 7.5):
        course = lambda s: eps_u + s * (eps_c - eps_u)  # noqa: E731
        assert torch.allclose(course(guidance.s_from("ho_salimans", value)), (1 + value) * eps_c - value * eps_u)
        assert torch.allclose(course(guidance.s_from("lerp", value)), (1 - value) * eps_u + value * eps_c)
        assert guidance.s_from("diffusers", value) == guidance.s_from("course", value) == value
        assert guidance.ho_w_from_s(guidance.s_from("ho_salimans", value)) == pytest.approx(value)
    assert guidance.s_from("ho_salimans", 0) == 1.0  # their "no guidance" is the plain conditional model
    with pytest.raises(ValueError, match="valid ones are"):
        guidance.s_from("ho", 1.0)
    with pytest.raises(ValueError):
        guidance.s_from("lerp", math.nan)


def test_cfg_pair_is_one_batch_of_2B_with_the_null_class():
    net = Recording()
    x, t, y = _inputs()
    eps_c, eps_u = guidance.cfg_pair(net, x, t, y)
    assert len(net.calls) == 1 and net.calls[0][0] == 2 * len(x)
    assert torch.equal(net.calls[0][1], torch.cat([y, torch.full_like(y, 3)]))
    assert torch.allclose(eps_c, net.inner(x, t, y)) and torch.allclose(eps_u, net.inner(x, t, torch.full_like(y, 3)))


def test_one_batch_equals_two_passes():
    net = Recording()
    x, t, y = _inputs()
    eps_c, eps_u = net.inner(x, t, y), net.inner(x, t, torch.full_like(y, 3))
    for s in (0.0, 1.0, 3.0):
        assert torch.allclose(guidance.classifier_free(net, y, s)(x, t), eps_u + s * (eps_c - eps_u), atol=1e-6)


def test_rescale_guidance_matches_the_formula():
    g = torch.Generator().manual_seed(3)
    eps_cond = torch.randn((4, 1, 8, 8), generator=g)
    eps_cfg = 3 * torch.randn((4, 1, 8, 8), generator=g) + 1
    assert torch.equal(guidance.rescale_guidance(eps_cfg, eps_cond, 0.0), eps_cfg)
    full = guidance.rescale_guidance(eps_cfg, eps_cond, 1.0)
    # phi = 1: each image's std becomes that of its conditional prediction
    assert torch.allclose(full.std(dim=(1, 2, 3)), eps_cond.std(dim=(1, 2, 3)), rtol=1e-5)
    by_hand = eps_cfg * eps_cond.std(dim=(1, 2, 3), keepdim=True) / eps_cfg.std(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(guidance.rescale_guidance(eps_cfg, eps_cond, 0.7), 0.7 * by_hand + 0.3 * eps_cfg, atol=1e-6)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            guidance.rescale_guidance(eps_cfg, eps_cond, bad)
    with pytest.raises(ValueError, match="same"):
        guidance.rescale_guidance(eps_cfg, eps_cond[:2], 0.5)


def test_rescaled_classifier_free():
    net = Recording()
    x, t, y = _inputs()
    plain = guidance.classifier_free(net, y, 4.0)(x, t)
    eps_c = net.inner(x, t, y)
    net.calls.clear()
    out = guidance.rescaled_classifier_free(net, y, 4.0, phi=0.7)(x, t)
    assert len(net.calls) == 1 and net.calls[0][0] == 2 * len(x)  # one batch of 2B
    assert torch.allclose(out, guidance.rescale_guidance(plain, eps_c, 0.7), atol=1e-6)
    assert torch.allclose(guidance.rescaled_classifier_free(net, y, 4.0, phi=0.0)(x, t), plain, atol=1e-6)
    assert torch.allclose(guidance.rescaled_classifier_free(net, y, 1.0, phi=0.7)(x, t), eps_c, atol=1e-6)
    with pytest.raises(ValueError):
        guidance.rescaled_classifier_free(net, y, 4.0, phi=2.0)


def test_interval_guidance_switches_by_sigma():
    schedule = make_schedule("linear", 1000)
    net = Recording()
    x, _, y = _inputs()
    alpha_bar = schedule.alpha_bars.double()
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt()
    model = guidance.interval_classifier_free(net, y, 5.0, schedule, sigma_lo=0.5, sigma_hi=3.0)
    inside = int(torch.nonzero((sigma > 0.5) & (sigma <= 3.0))[0])
    outside_hi, outside_lo = 999, 0
    for t, on in ((inside, True), (outside_hi, False), (outside_lo, False)):
        tb = torch.full((len(x),), t)
        net.calls.clear()
        out = model(x, tb)
        want = guidance.classifier_free(net.inner, y, 5.0)(x, tb) if on else net.inner(x, tb, y)
        assert torch.allclose(out, want, atol=1e-6)
        assert [c[0] for c in net.calls] == ([2 * len(x)] if on else [len(x)])  # one pass outside
    # a batch whose timesteps straddle the interval: each row gets its own rule
    tb = torch.tensor([inside, 999, inside, 0, inside, 999])
    mixed = model(x, tb)
    for i in range(len(x)):
        row = guidance.interval_classifier_free(net, y[i:i + 1], 5.0, schedule, 0.5, 3.0)(x[i:i + 1], tb[i:i + 1])
        assert torch.allclose(mixed[i], row[0], atol=1e-6)
    # the whole range of sigma: plain CFG
    everywhere = guidance.interval_classifier_free(net.inner, y, 5.0, schedule)
    assert torch.allclose(everywhere(x, torch.full((len(x),), 999)),
                          guidance.classifier_free(net.inner, y, 5.0)(x, torch.full((len(x),), 999)), atol=1e-6)
    with pytest.raises(ValueError):
        guidance.interval_classifier_free(net.inner, y, 5.0, schedule, sigma_lo=3.0, sigma_hi=1.0)


def test_wrappers_run_in_a_sampler():
    schedule = make_schedule("linear", 1000)
    net = nets.ConditionalMLPDenoiser(3, hidden=16, layers=1)
    y = torch.tensor([0, 1, 2, 0])
    for model in (guidance.rescaled_classifier_free(net, y, 3.0),
                  guidance.interval_classifier_free(net, y, 3.0, schedule, 0.3, 5.0)):
        x = samplers.ddim_sample(model, (4, 2), schedule, steps=5, generator=torch.Generator().manual_seed(0))
        assert x.shape == (4, 2) and torch.isfinite(x).all()


def test_conditional_mlp_denoiser_labels():
    net = nets.ConditionalMLPDenoiser(3)
    x = torch.randn(5, 2)
    assert net(x, 10, torch.tensor([0, 1, 2, 3, 0])).shape == (5, 2)
    assert torch.allclose(net(x, 10), net(x, 10, torch.full((5,), 3)))  # y=None is the null class
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        net(x, 10, torch.tensor([0, 1, 2, 4, 0]))


def test_rescale_in_x0_space():
    schedule = make_schedule("linear", 1000)
    net = Recording()
    x, t, y = _inputs(t=700)
    eps_c, eps_u = net.inner(x, t, y), net.inner(x, t, torch.full_like(y, 3))
    eps_cfg = eps_u + 4.0 * (eps_c - eps_u)
    ab = schedule.alpha_bars[700]
    x0 = lambda e: (x - (1 - ab).sqrt() * e) / ab.sqrt()  # noqa: E731
    x0_final = guidance.rescale_guidance(x0(eps_cfg), x0(eps_c), 0.7)
    want = (x - ab.sqrt() * x0_final) / (1 - ab).sqrt()
    out = guidance.rescaled_classifier_free(net, y, 4.0, phi=0.7, schedule=schedule)(x, t)
    assert torch.allclose(out, want, atol=1e-4)
    # phi = 0 is plain CFG in either space
    assert torch.allclose(guidance.rescaled_classifier_free(net, y, 4.0, phi=0.0, schedule=schedule)(x, t), eps_cfg, atol=1e-4)
