"""Super-resolution (lesson 09): the degradation, the condition, the loss and guided sampling."""

import pytest
import torch

from course_lib import nets, superres
from course_lib.schedules import make_schedule


def _digits(n=4, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_downsample_is_block_average():
    x = _digits(2)
    lr = superres.downsample(x, 4)
    assert lr.shape == (2, 1, 8, 8)
    torch.testing.assert_close(lr[0, 0, 1, 2], x[0, 0, 4:8, 8:12].mean())
    # constant images stay constant, and averaging commutes with the mean
    torch.testing.assert_close(superres.downsample(torch.full((1, 1, 32, 32), 0.3), 8), torch.full((1, 1, 4, 4), 0.3))
    torch.testing.assert_close(lr.mean(), x.mean())


@pytest.mark.parametrize("factor", [0, -2, 3, 2.0, True, 64])
def test_downsample_bad_factor(factor):
    with pytest.raises(ValueError, match="factor|divisible by"):
        superres.downsample(_digits(1), factor)


def test_condition_shapes_and_errors():
    for f in superres.FACTORS:
        assert superres.condition(superres.downsample(_digits(3), f)).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="factor in"):
        superres.condition(torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="B, 1, h, h"):
        superres.condition(torch.zeros(1, 3, 8, 8))


def test_consistency_of_bicubic_is_not_zero_but_of_exact_upsampling_is():
    x = _digits(3)
    lr = superres.downsample(x, 4)
    # nearest-neighbour upsampling reproduces the block averages exactly
    nearest = lr.repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert superres.consistency_mse(nearest, lr) < 1e-12
    assert superres.consistency_mse(x, lr) < 1e-12  # the original explains its own downsampling
    assert superres.consistency_mse(torch.zeros_like(x), lr) > 0.01


def test_sr_loss_draws_factors_and_drops_conditions():
    """The loss sees each factor about as often as asked and zero conditions about 10% of the time."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t):
            seen.append(x[:, 1:].clone())  # the condition channel
            return torch.zeros_like(x[:, :1])

    loss = superres.sr_loss(make_schedule("linear", 1000))
    x = -torch.ones(2000, 1, 32, 32)
    x[:, :, 8:24, 14:18] = 1.0  # a bar: its downsampled edges differ between factors
    loss(Spy(), (x,), torch.Generator().manual_seed(0))
    cond = seen[0]
    zero = (cond == 0).flatten(1).all(1)
    assert 0.07 < zero.float().mean() < 0.13
    refs = [superres.upsample(superres.downsample(x[:1], f)) for f in superres.FACTORS]
    which = torch.stack([(cond - r).abs().flatten(1).amax(1) < 1e-5 for r in refs], 1)  # (B, 3)
    assert (which.sum(1) == (~zero).long()).all()  # each kept condition is exactly one factor's
    shares = which[~zero].float().mean(0)
    torch.testing.assert_close(shares, torch.tensor([0.25, 0.5, 0.25]), atol=0.04, rtol=0)


def test_sr_loss_bad_probs():
    with pytest.raises(ValueError, match="one probability per factor"):
        superres.sr_loss(make_schedule("linear", 1000), factor_probs=(0.5, 0.5))


def test_guided_model_combines_both_passes():
    torch.manual_seed(0)
    net = nets.UNet(in_channels=2, out_channels=1, channels=(8, 16), blocks=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x_t, cond, t = torch.randn(3, 1, 32, 32), superres.condition(superres.downsample(_digits(3), 4)), torch.tensor([5, 500, 900])
    eps_c = net(torch.cat([x_t, cond], 1), t)
    eps_u = net(torch.cat([x_t, torch.zeros_like(cond)], 1), t)
    torch.testing.assert_close(superres.guided_model(net, cond, 1.0)(x_t, t), eps_c)
    torch.testing.assert_close(superres.guided_model(net, cond, 0.0)(x_t, t), eps_u)
    torch.testing.assert_close(superres.guided_model(net, cond, 2.5)(x_t, t), eps_u + 2.5 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="finite"):
        superres.guided_model(net, cond, float("nan"))


def test_upscale_shape_range_and_determinism():
    from course_lib.pretrained import Pretrained

    net = nets.UNet(in_channels=2, out_channels=1, channels=(8, 16), blocks=1).eval()
    pipe = Pretrained("tiny-sr", net, make_schedule("linear", 1000), (1, 32, 32), None, {})
    lr = superres.downsample(_digits(2), 4)
    a = superres.upscale(pipe, lr, steps=3, w=2.0, generator=torch.Generator().manual_seed(1))
    b = superres.upscale(pipe, lr, steps=3, w=2.0, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b)
    # the last DDIM step (to alpha_bar = 1) returns the clipped x0_hat itself
    assert a.min() >= -1 and a.max() <= 1
