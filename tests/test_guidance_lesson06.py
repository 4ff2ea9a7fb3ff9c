"""Lesson 06, course_lib.guidance: classifier guidance checked in closed form on a labelled 2-D mixture
(Bayes' rule on scores), the mean-shift form (Dhariwal & Nichol, 2021, Algorithm 1) against the eps form
(Algorithm 2), the original timestep seen by the classifier, and loud errors."""

import math

import pytest
import torch

from course_lib import guidance, samplers, score
from course_lib.schedules import make_schedule

SCHEDULE = make_schedule("linear", 1000)


def _mixture():
    # three labelled blobs; the label of a point is its component
    return score.GaussianMixture([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.6, 0.6, 0.6], [0.5, 0.3, 0.2])


def _alpha_bar(t):
    return torch.cumprod(1 - SCHEDULE.betas.double(), 0)[t].item()


def _class_score(mix, x, k, ab):
    """grad log N(x; sqrt(ab) mu_k, (ab s_k^2 + 1 - ab) I): the score of class k alone, in closed form."""
    var = ab * mix.stds[k] ** 2 + 1 - ab
    return ((math.sqrt(ab) * mix.means[k] - x.double()) / var).to(x.dtype)


@pytest.mark.parametrize("t", [0, 100, 400, 800])
def test_grad_log_p_y_is_class_score_minus_score(t):
    mix, ab = _mixture(), _alpha_bar(t)
    clf = guidance.mixture_classifier(mix, SCHEDULE)
    x = 3 * torch.randn((64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(64) % 3
    grad = guidance.classifier_log_prob_grad(clf, x, t, y)
    noised = mix.noised(ab)
    expected = torch.stack([_class_score(mix, x[i:i + 1], int(y[i]), ab)[0] for i in range(64)]) - noised.score(x)
    assert torch.allclose(grad, expected, atol=1e-8)
    assert not grad.requires_grad
    # the logits are exact: log_softmax gives the noised mixture's responsibilities
    assert torch.allclose(torch.softmax(clf(x, t), 1), noised.responsibilities(x), atol=1e-10)


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0])
def test_eps_form_is_bayes_rule_on_scores(s):
    """eps_guided = -sqrt(1 - ab) (score + s grad log p(y | x_t)); at s = 1 the exact class-conditional eps."""
    mix, t = _mixture(), 300
    ab = _alpha_bar(t)
    clf = guidance.mixture_classifier(mix, SCHEDULE)
    x = 2 * torch.randn((32, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    guided = guidance.classifier_guided(score.exact_eps(mix, SCHEDULE), clf, 1, s, SCHEDULE)
    eps = guided(x, torch.full((32,), t))
    sc = mix.noised(ab).score(x)
    class_sc = _class_score(mix, x, 1, ab)
    assert torch.allclose(eps, -math.sqrt(1 - ab) * (sc + s * (class_sc - sc)), atol=1e-8)
    if s == 1.0:
        assert torch.allclose(eps, -math.sqrt(1 - ab) * class_sc, atol=1e-8)


def test_mean_shift_step_adds_s_sigma_grad_to_the_ancestral_step():
    x = torch.randn((8, 2), generator=torch.Generator().manual_seed(3))
    eps, grad, z = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    for t, t_prev in [(500, 499), (500, 480), (0, -1)]:
        plain = samplers.ddpm_step(x, eps, t, t_prev, SCHEDULE, noise=z)
        guided = guidance.classifier_mean_shift_step(x, eps, grad, t, t_prev, SCHEDULE, 2.5, noise=z)
        sigma2 = guidance.ddpm_variance(t, t_prev, SCHEDULE)
        if t_prev >= 0:
            ab, ab_prev = _alpha_bar(t), _alpha_bar(t_prev)
            assert sigma2 == pytest.approx((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), rel=1e-12)
        else:
            assert sigma2 == 0.0
        assert torch.allclose(guided, plain + 2.5 * sigma2 * grad, atol=1e-6)


def test_mean_shift_and_eps_shift_agree_to_first_order():
    """Through one ancestral step (no clipping) the eps form moves the mean by s beta_t / sqrt(alpha_t) grad,
    the mean-shift form by s Sigma_t grad: exactly that difference, and a relative gap O(beta) away from t = 0."""
    mix, s = _mixture(), 2.0
    clf = guidance.mixture_classifier(mix, SCHEDULE)
    model = score.exact_eps(mix, SCHEDULE)
    x = 2 * torch.randn((16, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z = torch.randn_like(x)
    for t in (100, 500, 900):
        tb = torch.full((16,), t)
        grad = guidance.classifier_log_prob_grad(clf, x, t, 2)
        via_eps = samplers.ddpm_step(x, guidance.classifier_guided(model, clf, 2, s, SCHEDULE)(x, tb), t, t - 1,
                                     SCHEDULE, noise=z)
        via_mean = guidance.classifier_mean_shift_step(x, model(x, tb), grad, t, t - 1, SCHEDULE, s, noise=z)
        plain = samplers.ddpm_step(x, model(x, tb), t, t - 1, SCHEDULE, noise=z)
        beta = SCHEDULE.betas[t].double().item()
        assert torch.allclose(via_eps - plain, s * beta / math.sqrt(1 - beta) * grad, atol=1e-9)
        assert torch.allclose(via_mean - plain, s * guidance.ddpm_variance(t, t - 1, SCHEDULE) * grad, atol=1e-9)
        gap = (via_eps - via_mean).norm() / (via_eps - plain).norm()
        assert gap < 0.05, (t, gap)


def test_guided_samples_concentrate_on_the_class_as_s_grows():
    mix = _mixture()
    clf = guidance.mixture_classifier(mix, SCHEDULE)
    model = score.exact_eps(mix, SCHEDULE)
    shares = []
    for s in (0.0, 1.0, 4.0):
        g = torch.Generator().manual_seed(0)
        x = guidance.classifier_mean_shift_sample(model, clf, 2, s, (600, 2), SCHEDULE, steps=100, generator=g)
        shares.append((score.GaussianMixture(mix.means, mix.stds, mix.weights).responsibilities(x).argmax(1) == 2)
                      .float().mean().item())
    assert shares[0] == pytest.approx(0.2, abs=0.06)  # unguided: the class's weight
    assert shares[1] > 0.9  # s = 1: the exact class-conditional law
    assert shares[2] >= shares[1] - 0.01


def test_classifier_sees_the_original_timestep_with_fewer_steps():
    seen = []
    mix = _mixture()
    exact = guidance.mixture_classifier(mix, SCHEDULE)

    def clf(x, t):
        seen.append(sorted(set(t.tolist())))
        return exact(x, t)

    model = score.exact_eps(mix, SCHEDULE)
    guidance.classifier_mean_shift_sample(model, clf, 0, 1.0, (4, 2), SCHEDULE, steps=10,
                                          generator=torch.Generator().manual_seed(0))
    assert [v[0] for v in seen] == samplers.ddim_timesteps(1000, 10).tolist()
    seen.clear()
    samplers.ddim_sample(guidance.classifier_guided(model, clf, 0, 1.0, SCHEDULE), (4, 2), SCHEDULE, steps=10,
                         generator=torch.Generator().manual_seed(0))
    assert [v[0] for v in seen] == samplers.ddim_timesteps(1000, 10).tolist()


def test_s_zero_mean_shift_is_plain_ancestral_sampling():
    mix = _mixture()
    model = score.exact_eps(mix, SCHEDULE)
    clf = guidance.mixture_classifier(mix, SCHEDULE)
    a = guidance.classifier_mean_shift_sample(model, clf, 1, 0.0, (50, 2), SCHEDULE, steps=20,
                                              generator=torch.Generator().manual_seed(5))
    b = samplers.ddpm_sample(model, (50, 2), SCHEDULE, steps=20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_bad_input_is_a_clear_value_error():
    mix = _mixture()
    model = score.exact_eps(mix, SCHEDULE)
    clf = guidance.mixture_classifier(mix, SCHEDULE)
    x = torch.zeros(4, 2)
    for s in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            guidance.classifier_mean_shift_sample(model, clf, 0, s, (4, 2), SCHEDULE, steps=5)
        with pytest.raises(ValueError, match="finite"):
            guidance.classifier_mean_shift_step(x, x, x, 10, 9, SCHEDULE, s)
    with pytest.raises(ValueError, match="labels have shape"):
        guidance.classifier_mean_shift_sample(model, clf, torch.tensor([0, 1]), 1.0, (4, 2), SCHEDULE, steps=5)
    with pytest.raises(ValueError, match="labels have shape"):
        guidance.classifier_log_prob_grad(clf, x, 10, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be in"):
        guidance.classifier_log_prob_grad(clf, x, 10, 3)
    with pytest.raises(ValueError, match="grad has shape"):
        guidance.classifier_mean_shift_step(x, x, torch.zeros(4, 3), 10, 9, SCHEDULE, 1.0)
    with pytest.raises(ValueError, match="t_prev"):
        guidance.classifier_mean_shift_step(x, x, x, 10, 10, SCHEDULE, 1.0)
    with pytest.raises(ValueError, match="null class"):
        guidance.unconditional(torch.nn.Linear(2, 2))  # a network trained without label dropout
    with pytest.raises(ValueError, match="GaussianMixture"):
        guidance.mixture_classifier("not a mixture", SCHEDULE)

    def conditional(x, t, y):  # forgot guidance.unconditional(net)
        return x

    with pytest.raises(ValueError, match="unconditional"):
        guidance.classifier_mean_shift_sample(conditional, clf, 0, 1.0, (4, 2), SCHEDULE, steps=5)
