"""Lesson 09's widgets, driven headless: set a control's ``.value`` (or click) and check what they computed."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import guidance, inpainting, metrics, nets, pretrained, samplers, superres, widgets  # noqa: E402
from course_lib.checks import lesson09  # noqa: E402
from course_lib.schedules import make_schedule  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    pipe = pretrained.load("mnist-unet")
    return guidance.unconditional(pipe.model), pipe.schedule


def test_preset_masks():
    assert widgets.preset_mask("none").min() == 1
    right = widgets.preset_mask("right columns", 12)
    assert right[..., :20].min() == 1 and right[..., 20:].max() == 0
    box = widgets.preset_mask("box", 14)
    assert torch.equal(box, metrics.inpainting_mask("box")) and 1 - box.mean() == pytest.approx(14 * 14 / 1024)
    assert torch.equal(widgets.preset_mask("right columns", 16), metrics.inpainting_mask("right half"))
    assert torch.equal(widgets.preset_mask("lines"), metrics.inpainting_mask("lines"))
    assert widgets.preset_mask("right columns", 0).min() == 1
    with pytest.raises(ValueError, match="valid presets"):
        widgets.preset_mask("left half")
    with pytest.raises(ValueError, match="size_px"):
        widgets.preset_mask("box", 40)


def test_mask_explorer_presets_brush_and_button(unet):
    model, schedule = unet
    x, y = metrics.heldout_digits(4)
    w = widgets.mask_explorer(model, schedule, x, y, index=1, steps=3, samples=2, generator_seed=5)
    assert torch.equal(w.x_T, torch.randn((2, 1, 32, 32), generator=torch.Generator().manual_seed(5)))
    assert w.masked_fraction == 0.5 and w.label == 1 and not w.stale
    assert w.completions.shape == (2, 1, 32, 32)
    keep = w.keep_mask.bool()
    assert torch.equal(w.completions[:, :, keep[0, 0]], x[1:2].expand(2, -1, -1, -1)[:, :, keep[0, 0]])  # known exact
    # what the check of exercise 9.5 recomputes is what the widget shows
    w.size_px.value = 8
    assert w.kept == lesson09.kept_at(model, schedule, x[1:2], 1, 8, w.x_T, 3, w.seed)
    assert w.kept == int((metrics.predict_labels(w.completions) == 1).sum())
    assert "25.0%" in w.readout.value and f"{w.kept} of 2" in w.readout.value
    # the brush masks 4x4 blocks on top of the preset, and waits for the button
    before = w.completions.clone()
    w.cells[0].value = True
    assert w.stale and w.keep_mask[0, 0, :4, :4].max() == 0 and w.masked_fraction == pytest.approx(0.25 + 16 / 1024)
    assert torch.equal(w.completions, before) and "press" in w.readout.value
    w.run.click()
    assert not w.stale and w.completions[:, :, :4, :4].shape == (2, 1, 4, 4)
    # the presets and methods
    w.preset.value = "random pixels"
    assert w.size_px.disabled and w.masked_fraction > 0.75
    w.preset.value = "none"
    w.cells[0].value = False
    w.method.value = "repaint"
    assert w.masked_fraction == 0 and torch.equal(w.completions, x[1:2].expand(2, -1, -1, -1))


def test_mask_explorer_matches_inpaint(unet):
    model, schedule = unet
    x, y = metrics.heldout_digits(2)
    w = widgets.mask_explorer(model, schedule, x, y, index=0, preset="box", size_px=14, method="clean", steps=4,
                              samples=3, generator_seed=2)
    want = inpainting.inpaint(model, x[:1].expand(3, -1, -1, -1), metrics.inpainting_mask("box"), schedule, steps=4,
                              method="clean", x_T=w.x_T, generator=torch.Generator().manual_seed(3), clip_x0=True)
    assert torch.equal(w.completions, want)


@pytest.fixture(scope="module")
def tiny_sr():
    torch.manual_seed(0)
    net = nets.UNet(in_channels=2, out_channels=1, channels=[8, 16], blocks=1).eval()
    with torch.no_grad():  # the output layer starts at zero; give it weights so the samples depend on the condition
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return pretrained.Pretrained("tiny-sr", net, make_schedule("linear", 1000), (1, 32, 32), None, {})


def test_superres_explorer_factor_and_guidance(tiny_sr):
    x, y = metrics.heldout_digits(3)
    w = widgets.superres_explorer(tiny_sr, x, y, index=2, factor=4, w=1.0, samples=2, steps=3, generator_seed=4)
    assert w.x_lr.shape == (1, 1, 8, 8) and w.sr.shape == (2, 1, 32, 32) and w.label == 2
    assert torch.equal(w.x_lr, superres.downsample(x[2:3], 4))
    w.factor.value = 8
    w.w.value = 2.5
    cond = superres.condition(superres.downsample(x[2:3], 8)).expand(2, -1, -1, -1)
    with torch.no_grad():
        want = samplers.ddim_sample(superres.guided_model(tiny_sr.model, cond, 2.5), cond.shape, tiny_sr.schedule,
                                    steps=3, x_T=w.x_T, clip_x0=True)
    assert torch.allclose(w.sr, want, atol=1e-6)
    assert w.x_lr.shape == (1, 1, 4, 4) and torch.equal(w.predicted, metrics.predict_labels(w.sr))
    assert w.consistency_sr == pytest.approx((superres.downsample(w.sr, 8) - w.x_lr).square().mean().item())
    assert w.psnr_bicubic == pytest.approx(metrics.psnr(superres.upsample(w.x_lr).clamp(-1, 1), x[2:3]).item())
    assert w.sharpness_real == pytest.approx(metrics.sharpness(x[2:3]).item())
    assert "x8 (4x4 -&gt; 32x32)" in w.readout.value or "x8 (4x4 -> 32x32)" in w.readout.value
    assert "w = 2.5" in w.readout.value
    assert list(w.factor.options) == [2, 4, 8]
