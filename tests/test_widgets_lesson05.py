"""Lesson 05's widget, driven headless: set a control's ``.value`` and check what it computed."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from course_lib import score, widgets  # noqa: E402


def _toy():
    return score.GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])


def test_langevin_explorer_plain_annealed_and_unstable():
    mix = _toy()
    w = widgets.langevin_explorer(mix, n=400, step_size=0.1, n_steps=500)
    g = torch.Generator().manual_seed(1)
    assert torch.allclose(w.samples, score.langevin(mix.score, w.x_init, 0.1, 500, generator=g))
    assert w.stable and abs(w.weights.sum().item() - 1) < 1e-9
    assert abs(w.weights[1].item() - 0.5) < 0.1  # plain Langevin keeps the initial split
    w.annealed.value = True
    assert abs(w.weights[1].item() - 0.8) < 0.07  # annealing gets the weights right
    assert "annealed, 10 levels x 50 steps" in w.readout.value
    w.annealed.value = False
    w.step_size.value = 5.0  # above 4 s^2 = 4: diverges
    assert not w.stable and "DIVERGED" in w.readout.value
    w.step_size.value = 2.0
    assert w.stable
