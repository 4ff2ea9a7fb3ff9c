"""Lesson 06's widget, driven headless: set the scale slider's ``.value`` and check what it computed."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import guidance, metrics, nets, pretrained, samplers, widgets  # noqa: E402
from course_lib.checks import lesson06  # noqa: E402


def _setup():
    unet = pretrained.load("mnist-unet")
    torch.manual_seed(0)
    classifier = nets.NoisyClassifier(channels=(8, 16, 16), time_dim=8).eval()  # untrained, small: plumbing only
    return unet, classifier


def test_classifier_guidance_explorer_samples_reads_out_and_caches():
    unet, classifier = _setup()
    w = widgets.classifier_guidance_explorer(unet.model, classifier, unet.schedule, scales=(0.0, 3.0), per_class=2,
                                             steps=2, value=0.0)
    assert w.samples.shape == (20, 1, 32, 32) and w.labels.tolist() == list(range(10)) * 2
    # s = 0 is the unconditional model from the same noise
    plain = samplers.ddim_sample(guidance.unconditional(unet.model), (20, 1, 32, 32), unet.schedule, steps=2,
                                 x_T=w.x_T, clip_x0=True)
    assert torch.allclose(w.samples, plain, atol=1e-5)
    right = metrics.predict_labels(w.samples) == w.labels
    assert w.accuracy == pytest.approx(right.float().mean().item())
    assert w.digits_right == int(right.reshape(2, 10).all(0).sum()) and w.all_right == bool(right.all())
    assert "digits with every sample right" in w.readout.value and "s = 0" in w.readout.value
    first = w.samples
    w.scale.value = 3.0
    assert not torch.allclose(w.samples, first)  # guidance moved the samples
    assert "s = 3" in w.readout.value
    assert set(w.cache) == {0.0, 3.0}
    assert w.evaluate(0.0)["samples"] is first  # cached, not recomputed
    assert lesson06.smallest_all_right(w) in (None, 0.0, 3.0)


def test_classifier_guidance_explorer_refuses_one_sample_per_digit():
    unet, classifier = _setup()
    with pytest.raises(ValueError, match="per_class"):
        widgets.classifier_guidance_explorer(unet.model, classifier, unet.schedule, per_class=1, steps=2)


def test_classifier_guidance_explorer_runs_on_device_and_brings_the_samples_back(monkeypatch):
    """device=: the noise is drawn on the CPU from the seed and moved to the device, the guided model gets its labels
    there, and the samples come back to the CPU before the evaluation classifier and the plot. The 'meta' device
    stands in for a GPU (shapes without data); the sampler is a spy that records where things live and returns a
    stand-in whose .cpu() hands back real CPU images."""
    from unittest import mock

    unet, _ = _setup()
    seen = {}

    def spy_ddim_sample(model, shape, schedule, steps, x_T, clip_x0):
        seen.update(x_T=x_T.device, labels=model.y.device)
        out = mock.Mock()
        out.cpu.return_value = torch.zeros(shape)
        return out

    monkeypatch.setattr(widgets, "ddim_sample", spy_ddim_sample)
    w = widgets.classifier_guidance_explorer(unet.model, lambda x, t: None, unet.schedule, scales=(0.0, 2.0),
                                             steps=2, value=2.0, device=torch.device("meta"))
    assert w.x_T.device.type == "meta" and {d.type for d in seen.values()} == {"meta"}
    assert w.samples.device.type == "cpu" and w.labels.device.type == "cpu"
    assert torch.equal(w.samples, torch.zeros(20, 1, 32, 32)) and w.accuracy == pytest.approx(
        (metrics.predict_labels(torch.zeros(20, 1, 32, 32)) == w.labels).float().mean().item())
