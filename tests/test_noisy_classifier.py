"""The noise-aware classifier of lesson 06: the network (time input, per-sample gradients), its loss and recipe,
and the shipped ``mnist-noisy-classifier`` (size, sha256-checked load, accuracy by t in the manifest)."""

import pytest
import torch

from course_lib import guidance, nets, pretrained, schedules, train


def _small():
    torch.manual_seed(0)
    return nets.NoisyClassifier(channels=(8, 16, 16), time_dim=8)


def test_forward_shapes_and_time_input():
    net = _small().eval()
    x = torch.randn(5, 1, 32, 32)
    assert net(x, torch.tensor([0, 10, 100, 500, 999])).shape == (5, 10)
    assert net(x, 3).shape == (5, 10)  # a scalar t is broadcast
    assert not torch.allclose(net(x, 0), net(x, 900))  # the timestep changes the logits


def test_each_samples_gradient_depends_on_that_sample_alone():
    """GroupNorm, no BatchNorm: grad log p(y_i | x_i) must not change when another sample of the batch changes."""
    net = _small().train()  # even in training mode (BatchNorm would mix the batch here)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    g = guidance.classifier_log_prob_grad(net, x, torch.tensor([5, 50, 500, 900]), torch.tensor([0, 1, 2, 3]))
    x2 = x.clone()
    x2[1:] = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    g2 = guidance.classifier_log_prob_grad(net, x2, torch.tensor([5, 50, 500, 900]), torch.tensor([0, 1, 2, 3]))
    assert torch.allclose(g[0], g2[0], atol=1e-6)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_noisy_classifier_loss_is_cross_entropy_on_q_sampled_images():
    sched = schedules.make_schedule("linear", 1000)
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    y = torch.arange(6)
    seen = {}

    def spy(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros(len(x_t), 10, requires_grad=True)

    loss = train.noisy_classifier_loss(sched, augment_shift=0)(spy, (x, y), torch.Generator().manual_seed(4))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(10.0)).item())  # uniform logits
    g = torch.Generator().manual_seed(4)  # the same draws: t, then eps
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    ab = sched.alpha_bars[t].view(-1, 1, 1, 1)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(seen["x_t"], ab.sqrt() * x + (1 - ab).sqrt() * eps, atol=1e-5)


def test_accuracy_by_t_of_a_perfect_and_a_clean_classifier():
    sched = schedules.make_schedule("linear", 1000)
    x = torch.randn(20, 1, 32, 32)
    y = torch.arange(20) % 10

    def oracle(x_t, t):  # knows the labels: always right
        return torch.nn.functional.one_hot(y[: len(x_t)], 10).float()

    assert train.accuracy_by_t(oracle, x, y, sched, timesteps=(0, 500)) == {0: 1.0, 500: 1.0}
    acc = train.accuracy_by_t(lambda x_t: oracle(x_t, None), x, y, sched, timesteps=(0,), noisy=False)
    assert acc == {0: 1.0}


def test_recipe_is_registered():
    assert "mnist-noisy-classifier" in train.RECIPES


def test_shipped_noisy_classifier():
    p = pretrained.load("mnist-noisy-classifier")
    info = p.info
    assert info["bytes"] <= 8_000_000 and info["kind"] == "noisy-classifier"
    assert isinstance(p.model, nets.NoisyClassifier) and p.schedule.T == 1000
    for key in ("recipe", "data", "training", "seconds", "hardware", "sha256", "test_accuracy_by_t"):
        assert key in info
    acc = {int(k): v for k, v in info["test_accuracy_by_t"].items()}
    assert acc[0] > 0.9  # nearly clean held-out digits
    assert acc[999] < 0.2  # pure noise: about chance
    assert acc[0] < 1.0  # 100% on held-out digits would mean a leaked split
    with torch.no_grad():
        assert p.model(torch.zeros(2, 1, 32, 32), torch.tensor([0, 999])).shape == (2, 10)


def test_shipped_noisy_classifier_is_what_the_recipe_builds():
    # `python -m course_lib.train mnist-noisy-classifier` must reproduce the shipped model: the manifest's
    # recipe line, step count and network widths agree with the recipe's defaults (a retrained classifier
    # shipped without updating the recipe, or the reverse, fails here).
    import inspect

    info = pretrained.load("mnist-noisy-classifier").info
    fn, default_steps = train.RECIPES["mnist-noisy-classifier"]
    params = inspect.signature(fn).parameters
    assert info["recipe"] == f"python -m course_lib.train mnist-noisy-classifier --steps {default_steps}"
    assert info["config"]["channels"] == list(params["channels"].default)
    assert f"{default_steps} steps" in info["training"] and f"EMA {params['ema_decay'].default}" in info["training"]
