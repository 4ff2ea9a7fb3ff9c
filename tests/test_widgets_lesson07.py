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


def test_cfg_explorer_device_cpu_is_the_default_bit_for_bit():
    pipe = pretrained.load("mnist-unet")
    labels = torch.tensor([2, 5])
    default = widgets.cfg_explorer(pipe.model, pipe.schedule, labels, s=2.0, steps=2, generator_seed=3)
    on_cpu = widgets.cfg_explorer(pipe.model, pipe.schedule, labels, s=2.0, steps=2, generator_seed=3, device="cpu")
    assert torch.equal(on_cpu.x_T, default.x_T) and torch.equal(on_cpu.samples, default.samples)
    with torch.no_grad():
        want = samplers.ddim_sample(guidance.classifier_free(pipe.model, labels, 2.0), (2, 1, 32, 32), pipe.schedule,
                                    steps=2, x_T=torch.randn((2, 1, 32, 32), generator=torch.Generator().manual_seed(3)),
                                    clip_x0=True)
    assert torch.equal(on_cpu.samples, want)


def test_cfg_explorer_runs_the_network_on_device_and_brings_the_samples_back(monkeypatch):
    """device=: the noise is drawn on the CPU from the seed and moved to the device, the guided model gets its labels
    there, and the samples come back to the CPU before the evaluation classifier and the plot. The 'meta' device
    stands in for a GPU (shapes without data); the sampler is a spy that makes one guided evaluation and returns a
    stand-in whose .cpu() hands back real CPU images."""
    from unittest import mock

    from course_lib.schedules import make_schedule

    seen = {}

    def net(x, t, y):  # a class-conditional eps-model that records where its inputs live
        seen.update(x=x.device, t=t.device, y=y.device)
        return torch.zeros_like(x)

    def spy_ddim_sample(model, shape, schedule, steps, x_T, clip_x0):
        seen.update(x_T=x_T.device, labels=model.y.device)
        model(x_T, torch.full((shape[0],), 999, device=x_T.device))  # one guided evaluation (s = 2: both passes)
        out = mock.Mock()
        out.cpu.return_value = torch.zeros(shape)
        return out

    monkeypatch.setattr(widgets, "ddim_sample", spy_ddim_sample)
    labels = torch.tensor([3, 4])
    w = widgets.cfg_explorer(net, make_schedule("linear", 1000), labels, s=2.0, steps=2, null_class=10,
                             device=torch.device("meta"))
    assert w.x_T.device.type == "meta" and w.x_T.shape == (2, 1, 32, 32)
    assert {seen[k].type for k in ("x_T", "labels", "x", "t", "y")} == {"meta"}
    assert w.samples.device.type == "cpu" and torch.equal(w.samples, torch.zeros(2, 1, 32, 32))
    assert w.predicted.device.type == "cpu" and w.labels.device.type == "cpu"
    assert w.correct == int((w.predicted == labels).sum())
