"""Lesson 07's widget, driven headless: set the s slider's ``.value`` and check what it computed."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from course_lib import guidance, metrics, pretrained, samplers, widgets  # noqa: E402
from course_lib.checks import lesson07  # noqa: E402


def test_cfg_explorer_samples_the_fixed_batch_and_marks_s():
    pipe = pretrained.load("mnist-unet")
    labels = torch.tensor([0, 1, 2, 3])
    rows = [{"s": s, "accuracy": a, "spread": sp} for s, a, sp in ((0, 0.1, 30.0), (1, 0.9, 25.0), (3, 1.0, 20.0))]
    w = widgets.cfg_explorer(pipe.model, pipe.schedule, labels, s=1.0, measured=rows, steps=3, generator_seed=5)
    x_T = torch.randn((4, 1, 32, 32), generator=torch.Generator().manual_seed(5))
    assert torch.equal(w.x_T, x_T)
    first = w.samples.clone()
    w.s.value = 3.0
    with torch.no_grad():
        want = samplers.ddim_sample(guidance.classifier_free(pipe.model, labels, 3.0), x_T.shape, pipe.schedule,
                                    steps=3, x_T=x_T, clip_x0=True)
    assert torch.allclose(w.samples, want, atol=1e-5)
    assert not torch.allclose(w.samples, first)  # another s, another batch from the same noise
    assert torch.equal(w.predicted, metrics.predict_labels(w.samples))
    assert w.correct == int((w.predicted == labels).sum())
    assert w.correct == lesson07.correct_at(pipe.model, pipe.schedule, x_T, labels, 3.0, steps=3)  # what the check sees
    assert "s = 3.00" in w.readout.value and "w = 2.00" in w.readout.value
    assert f"{w.correct} of 4" in w.readout.value


def test_cfg_explorer_without_a_measured_curve():
    pipe = pretrained.load("mnist-unet")
    w = widgets.cfg_explorer(pipe.model, pipe.schedule, torch.tensor([7, 7]), s=0.0, steps=2)
    assert w.samples.shape == (2, 1, 32, 32) and 0 <= w.correct <= 2
    assert w.s.step == 0.25 and w.s.max == 8.0
