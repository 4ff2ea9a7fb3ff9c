"""Widget factories, driven headless: set a control's ``.value`` and check what the widget computed."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import diffusion, samplers, schedules, widgets  # noqa: E402


def _digits(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, 1, 8, 8), generator=g) * 2 - 1


def test_forward_explorer_follows_the_slider():
    s = schedules.make_schedule("linear", 100)
    x0 = _digits()
    w = widgets.forward_process_explorer(x0, s, generator=torch.Generator().manual_seed(1))
    assert w.slider.max == 99
    snrs = []
    for t in (0, 37, 99):
        w.slider.value = t
        snrs.append(w.snr)
        assert torch.allclose(w.x_t, diffusion.q_sample(x0, t, s, noise=w.noise))
        assert abs(w.snr - s.snr[t].item()) < 1e-6
        assert f"t = {t}:" in w.readout.value
    assert snrs[0] > snrs[1] > snrs[2]  # the signal fades as t grows


def test_schedule_explorer_rebuilds_the_schedule():
    w = widgets.schedule_explorer(_digits(1), generator=torch.Generator().manual_seed(0))
    assert w.schedule.name == "linear" and w.schedule.T == 1000
    w.T.value = 50
    assert w.schedule.T == 50
    assert w.schedule.alpha_bars[-1] > 0.1  # linear betas at T = 50 stop far from pure noise
    w.name.value = "cosine"
    assert w.schedule.name == "cosine" and w.beta_end.disabled
    assert torch.allclose(w.schedule.betas, schedules.cosine_betas(50))
    w.zero_snr.value = True
    assert w.schedule.alpha_bars[-1] == 0
    assert w.strip.shape == (11, 1, 8, 8)


def test_trajectory_scrubber_shows_the_chosen_step():
    states = [torch.full((2, 1, 4, 4), float(k)) for k in range(5)]
    w = widgets.trajectory_scrubber(states, [40, 30, 20, 10, -1], x0_hats=states)
    w.slider.value = 2
    assert w.t == 20 and torch.equal(w.shown, states[2])
    w.slider.value = 4
    assert w.t == -1 and "final sample" in w.readout.value


def test_ddim_explorer_resamples_on_change():
    s = schedules.make_schedule("linear", 100)
    model = lambda x, t: 0.1 * x  # noqa: E731 - a toy epsilon-predictor
    w = widgets.ddim_explorer(model, s, (2, 1, 4, 4), steps=10)  # clip_x0=False: the course-wide default
    expected = samplers.ddim_sample(model, (2, 1, 4, 4), s, steps=10, x_T=w.x_T)
    assert torch.allclose(w.samples, expected)
    assert w.samples.abs().max() > 1  # this toy model's samples leave [-1, 1]: nothing was clipped
    w.steps.value = 25
    assert torch.allclose(w.samples, samplers.ddim_sample(model, (2, 1, 4, 4), s, steps=25, x_T=w.x_T))
    clipped = widgets.ddim_explorer(model, s, (2, 1, 4, 4), steps=10, clip_x0=True)
    assert torch.allclose(clipped.samples, samplers.ddim_sample(model, (2, 1, 4, 4), s, steps=10, x_T=w.x_T, clip_x0=True))
    assert "25 steps" in w.readout.value and w.seconds >= 0


def test_ddim_explorer_reports_the_difference_to_its_reference_with_four_decimals():
    """The review saw '0.015 (target: below 0.015)' at the right answer 0.01471: print four decimals."""
    s = schedules.make_schedule("linear", 100)
    model = lambda x, t: 0.1 * x  # noqa: E731
    w = widgets.ddim_explorer(model, s, (2, 1, 4, 4), steps=10, reference_steps=50, threshold=0.015, clip_x0=True)
    reference = samplers.ddim_sample(model, (2, 1, 4, 4), s, steps=50, x_T=w.x_T, clip_x0=True)
    expected = (w.samples.clamp(-1, 1) - reference.clamp(-1, 1)).abs().mean().item()
    assert w.diff == pytest.approx(expected) and f"{expected:.4f}" in w.readout.value
    assert "target: below 0.015" in w.readout.value
    w.steps.value = 50
    assert w.diff == 0.0 and "0.0000" in w.readout.value


def test_ddim_explorer_runs_on_device_and_brings_the_samples_back(monkeypatch):
    """device=: the noise is drawn on the CPU from the seed and moved to the device (the 'meta' device stands in for
    a GPU); the samples and the reference come back to the CPU inside the timed region, so the plot and the
    difference readout get CPU tensors and a GPU's asynchronous kernels are counted in the seconds."""
    from unittest import mock

    seen = []

    def spy_ddim_sample(model, shape, schedule, steps, x_T, clip_x0, eta=0.0, generator=None):
        seen.append(x_T.device.type)
        out = mock.Mock()
        out.cpu.return_value = torch.zeros(shape)
        return out

    monkeypatch.setattr(widgets, "ddim_sample", spy_ddim_sample)
    s = schedules.make_schedule("linear", 100)
    w = widgets.ddim_explorer(lambda x, t: x, s, (2, 1, 4, 4), steps=10, reference_steps=50,
                              device=torch.device("meta"))
    assert w.x_T.device.type == "meta" and seen == ["meta", "meta"]  # the reference, then the samples
    assert w.samples.device.type == "cpu" and w.diff == 0.0
