"""Lesson 09's measures: masks, the seam, SSIM (against a direct loop), sharpness, and the two tables on tiny runs."""

import math

import pytest
import torch

from course_lib import guidance, metrics, nets, pretrained, superres
from course_lib.schedules import make_schedule


def test_masks_and_heldout_digits():
    fractions = {name: 1 - metrics.inpainting_mask(name).mean().item() for name in metrics.INPAINT_MASKS}
    assert fractions["right half"] == 0.5 and fractions["lines"] == 0.5
    assert fractions["box"] == pytest.approx(196 / 1024) and 0.75 < fractions["random pixels"] < 0.85
    for name in metrics.INPAINT_MASKS:
        m = metrics.inpainting_mask(name)
        assert m.shape == (1, 1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(metrics.inpainting_mask("random pixels"), metrics.inpainting_mask("random pixels"))
    with pytest.raises(ValueError, match="valid masks"):
        metrics.inpainting_mask("left half")
    x, y = metrics.heldout_digits(25)
    assert x.shape == (25, 1, 32, 32) and y[:20].tolist() == list(range(10)) * 2
    with pytest.raises(ValueError):
        metrics.heldout_digits(0)


def test_seam_counts_only_border_pairs():
    keep = metrics.inpainting_mask("right half")
    x = -torch.ones(2, 1, 32, 32)
    x[1, :, :, 16:] = 1.0  # a step of 2 exactly at the border
    torch.testing.assert_close(metrics.seam(x, keep), torch.tensor([0.0, 2.0]))
    x[0, :, :, 5] = 1.0  # a stroke far from the border does not count
    assert metrics.seam(x, keep)[0] == 0
    y = torch.zeros(1, 1, 32, 32)
    y[..., 10, 20] = 1.0  # one unknown pixel that differs from its known left neighbour? no: both unknown
    assert metrics.seam(y, keep).item() == 0
    assert math.isnan(metrics.seam(x, torch.ones(1, 1, 32, 32))[0])  # no border at all


def _ssim_loop(x, y, window=11, sigma=1.5, L=2.0):
    """SSIM by a direct loop over window positions (Wang et al., 2004), double precision."""
    x, y = x.double()[0, 0], y.double()[0, 0]
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = torch.outer(g, g) / torch.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            ma, mb = (k * a).sum(), (k * b).sum()
            va, vb = (k * (a - ma) ** 2).sum(), (k * (b - mb) ** 2).sum()
            cov = (k * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return torch.stack(vals).mean().item()


def test_ssim_matches_a_direct_loop_and_its_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    got = metrics.ssim(x, y)
    for b in range(3):
        assert got[b].item() == pytest.approx(_ssim_loop(x[b:b + 1], y[b:b + 1]), abs=1e-5)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(3))
    torch.testing.assert_close(metrics.ssim(x, y), metrics.ssim(y, x))
    assert (metrics.ssim(x, (x + 0.6 * torch.randn(x.shape, generator=g)).clamp(-1, 1)) < got).all()  # more noise, lower
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(x, y[:2])


def test_psnr_and_sharpness():
    x = -torch.ones(1, 1, 32, 32)
    assert metrics.psnr(x, x + 0.2).item() == pytest.approx(10 * math.log10(4 / 0.04), abs=1e-4)
    assert metrics.sharpness(x).item() == 0
    x[..., :, 16:] = 1.0  # one vertical edge of height 2 over 31 rows of the 31x31 difference grid
    assert metrics.sharpness(x).item() == pytest.approx(2 * 31 / (31 * 31))
    real, _ = metrics.heldout_digits(50)
    blurred = superres.upsample(superres.downsample(real, 4)).clamp(-1, 1)
    assert metrics.sharpness(blurred).mean() < 0.8 * metrics.sharpness(real).mean()  # bicubic is blurrier


def test_inpainting_table_on_a_tiny_run():
    pipe = pretrained.load("mnist-unet")
    model = guidance.unconditional(pipe.model)
    rows = metrics.inpainting_table(model, pipe.schedule, 3, masks=("box", "lines"), steps=4,
                                    methods=(("clean", {}), ("replace", {}), ("repaint", {"jump_length": 2, "jump_n_sample": 2})))
    assert [(r["mask"], r["method"]) for r in rows] == [(m, k) for m in ("box", "lines") for k in ("clean", "replace", "repaint")]
    for r in rows:
        assert r["known_error"] == 0.0 and 0 <= r["class_kept"] <= 1 and r["n"] == 3 and r["seam"] >= 0
    assert rows[2]["nfe"] == 6 and rows[2]["jump_length"] == 2 and rows[0]["nfe"] == 4
    cost = metrics.repaint_cost(model, pipe.schedule, n=1, settings=((10, 5, 2),))
    assert cost[0]["nfe_replace"] == 10 and cost[0]["nfe_repaint"] == 15 and cost[0]["nfe_ratio"] == 1.5
    assert cost[0]["seconds_ratio"] > 0


def test_superres_table_on_a_tiny_run():
    net = nets.UNet(in_channels=2, out_channels=1, channels=[8, 16], blocks=1).eval()
    pipe = pretrained.Pretrained("tiny-sr", net, make_schedule("linear", 1000), (1, 32, 32), None, {"sha256": "x"})
    result = metrics.superres_table(pipe, 4, w=1.0, ws=(0.0, 1.0), samples=2, other_factors=(8,), steps=2)
    names = [r["name"] for r in result["table"]]
    assert names == ["real digits", "bicubic", "SR, w = 1", "mean of 2 SR samples"]
    assert [r["w"] for r in result["sweep"]] == [0.0, 1.0] and result["sweep"][1]["psnr"] == result["table"][2]["psnr"]
    assert [(r["name"], r["factor"]) for r in result["factors"]] == [("bicubic", 8), ("SR, w = 1", 8)]
    bicubic = result["table"][1]
    x, y = metrics.heldout_digits(4)
    up = superres.upsample(superres.downsample(x, 4)).clamp(-1, 1)
    assert bicubic["psnr"] == pytest.approx(metrics.psnr(up, x).mean().item())
    assert bicubic["consistency"] < 0.01 and result["default_w"] == 1.0 and result["n"] == 4
