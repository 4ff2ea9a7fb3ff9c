"""The lesson 01 checks: the reference solutions pass, unfinished stubs propagate their
NotImplementedError, and plausible wrong answers fail with a hint that names the mistake."""

import pytest
import torch

from course_lib.checks import ExerciseError, lesson01

# ---------------------------------------------------------------- reference solutions (as in solutions/01)


def alpha_bar_from_betas(betas):
    return torch.cumprod(1 - betas, dim=0)


def forward_chain(x0, t, betas, generator=None):
    x = x0
    for s in range(t + 1):
        eps = torch.randn(x.shape, generator=generator)
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * eps
    return x


def q_sample(x0, t, alpha_bars, noise):
    alpha_bar = alpha_bars[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def snr(alpha_bars):
    return alpha_bars / (1 - alpha_bars)


def alpha_bar_from_log_snr(log_snr):
    return torch.sigmoid(log_snr)


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 1.x: stub")


# ---------------------------------------------------------------- plausible wrong answers

WRONG_ALPHA_BAR = {
    "alpha, not alpha_bar": (lambda b: 1 - b, "running product"),
    "sum instead of product": (lambda b: 1 - torch.cumsum(b, 0), "not 1 minus their sum"),
    "product of betas": (lambda b: torch.cumprod(b, 0), "not the betas"),
    "off by one (alpha_bar[0] = 1)": (lambda b: torch.cat([torch.ones(1), torch.cumprod(1 - b, 0)[:-1]]),
                                      "off by one"),
    "prod, not cumprod": (lambda b: torch.prod(1 - b), "cumulative"),
    "sqrt(alpha_bar)": (lambda b: torch.cumprod(1 - b, 0).sqrt(), "square root"),
}


def _chain(n_steps, scale, noise_std):
    def fn(x0, t, betas, generator=None):
        x = x0
        for s in range(n_steps(t)):
            x = scale(betas[s]) * x + noise_std(betas[s]) * torch.randn(x.shape, generator=generator)
        return x
    return fn


def _chain_inplace(x0, t, betas, generator=None):
    for s in range(t + 1):
        x0.mul_((1 - betas[s]).sqrt()).add_(betas[s].sqrt() * torch.randn(x0.shape, generator=generator))
    return x0


def _chain_reused_noise(x0, t, betas, generator=None):
    eps = torch.randn(x0.shape, generator=generator)  # drawn once, outside the loop
    x = x0
    for s in range(t + 1):
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * eps
    return x


WRONG_CHAIN = {
    "one noise draw reused": (_chain_reused_noise, "reused at every step"),
    "t steps (off by one)": (_chain(lambda t: t, lambda b: (1 - b).sqrt(), lambda b: b.sqrt()), "one step too few"),
    "t + 2 steps": (_chain(lambda t: t + 2, lambda b: (1 - b).sqrt(), lambda b: b.sqrt()), "one step too many"),
    "missing sqrt on alpha": (_chain(lambda t: t + 1, lambda b: 1 - b, lambda b: b.sqrt()), "sqrt(1 - beta_t)"),
    "beta as std": (_chain(lambda t: t + 1, lambda b: (1 - b).sqrt(), lambda b: b), "variance"),
    "no noise": (_chain(lambda t: t + 1, lambda b: (1 - b).sqrt(), lambda b: 0 * b), "no noise"),
    "modifies x0 in place": (_chain_inplace, "in place"),
}


def _q(scale_x, scale_eps, index=lambda t: t, shape=lambda a: a.reshape(-1, 1, 1, 1)):
    def fn(x0, t, alpha_bars, noise):
        a = shape(alpha_bars[index(t)])
        return scale_x(a) * x0 + scale_eps(a) * noise
    return fn


def _q_no_reshape(x0, t, alpha_bars, noise):
    a = alpha_bars[t]  # (B,): broadcasts against the last axis
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


WRONG_Q_SAMPLE = {
    "missing sqrt": (_q(lambda a: a, lambda a: 1 - a), "standard deviations"),
    "swapped": (_q(lambda a: (1 - a).sqrt(), lambda a: a.sqrt()), "close to 1 at small t"),
    "t - 1": (_q(lambda a: a.sqrt(), lambda a: (1 - a).sqrt(), index=lambda t: t - 1), "off by one"),  # wraps at t=0
    "t + 1": (_q(lambda a: a.sqrt(), lambda a: (1 - a).sqrt(), index=lambda t: (t + 1).clamp(max=999)), "off by one"),
    "no reshape to (B, 1, 1, 1)": (_q_no_reshape, "(B, 1, 1, 1)"),
    "one t for the whole batch": (_q(lambda a: a.sqrt(), lambda a: (1 - a).sqrt(), index=lambda t: t[0],
                                     shape=lambda a: a), "its own t"),
    "variance as noise scale": (_q(lambda a: a.sqrt(), lambda a: 1 - a), "not by 1 - alpha_bar"),
}

WRONG_SNR = {
    "inverted": (lambda a: (1 - a) / a, "noise-to-signal"),
    "ratio of stds": (lambda a: (a / (1 - a)).sqrt(), "variances"),
    "returns log-SNR": (lambda a: (a / (1 - a)).log(), "not its logarithm"),
    "1 + alpha_bar": (lambda a: a / (1 + a), "1 - alpha_bar"),
}

WRONG_INVERSE = {
    "sign flipped": (lambda lam: torch.sigmoid(-lam), "1 - alpha_bar"),
    "returns SNR": (lambda lam: lam.exp(), "which is the SNR"),
    "sqrt": (lambda lam: torch.sigmoid(lam).sqrt(), "sqrt(alpha_bar)"),
    "overflowing formula": (lambda lam: lam.exp() / (1 + lam.exp()), "torch.sigmoid"),
}


# ---------------------------------------------------------------- tests

CHECKS = [
    (lesson01.check_alpha_bar_from_betas, alpha_bar_from_betas, "1.1"),
    (lesson01.check_forward_chain, forward_chain, "1.2"),
    (lesson01.check_q_sample, q_sample, "1.3"),
    (lesson01.check_snr, snr, "1.4"),
    (lesson01.check_alpha_bar_from_log_snr, alpha_bar_from_log_snr, "1.5"),
]


@pytest.mark.parametrize("check, solution, ex", CHECKS, ids=[c[2] for c in CHECKS])
def test_reference_solution_passes(check, solution, ex, capsys):
    check(solution)
    assert f"✅ Exercise {ex} passed" in capsys.readouterr().out


@pytest.mark.parametrize("check", [c[0] for c in CHECKS], ids=[c[2] for c in CHECKS])
def test_stub_propagates_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def _expect_hint(check, fn, words):
    with pytest.raises(ExerciseError) as info:
        check(fn)
    assert words in str(info.value), str(info.value)
    assert "Hint:" in str(info.value)


@pytest.mark.parametrize("name", WRONG_ALPHA_BAR)
def test_wrong_alpha_bar_gets_a_hint(name):
    _expect_hint(lesson01.check_alpha_bar_from_betas, *WRONG_ALPHA_BAR[name])


@pytest.mark.parametrize("name", WRONG_CHAIN)
def test_wrong_forward_chain_gets_a_hint(name):
    _expect_hint(lesson01.check_forward_chain, *WRONG_CHAIN[name])


@pytest.mark.parametrize("name", WRONG_Q_SAMPLE)
def test_wrong_q_sample_gets_a_hint(name):
    _expect_hint(lesson01.check_q_sample, *WRONG_Q_SAMPLE[name])


def test_q_sample_crash_becomes_a_hint():
    def crashes(x0, t, alpha_bars, noise):
        return alpha_bars[t].reshape(-1, 1, 1, 1) * x0[:5]  # (B,1,1,1) against (5,...): cannot broadcast
    _expect_hint(lesson01.check_q_sample, crashes, "reshape it to (B, 1, 1, 1)")


@pytest.mark.parametrize("name", WRONG_SNR)
def test_wrong_snr_gets_a_hint(name):
    _expect_hint(lesson01.check_snr, *WRONG_SNR[name])


@pytest.mark.parametrize("name", WRONG_INVERSE)
def test_wrong_alpha_bar_from_log_snr_gets_a_hint(name):
    _expect_hint(lesson01.check_alpha_bar_from_log_snr, *WRONG_INVERSE[name])


# ---------------------------------------------------------------- the widget-driven answer (1.6)


def test_snr_crossings_of_the_linear_schedule():
    s = lesson01._linear()
    t1 = lesson01.snr_crossing(s)  # SNR = 1 is where alpha_bar halves
    assert s.snr[t1] < 1 <= s.snr[t1 - 1]
    assert s.alpha_bars[t1] < 0.5 <= s.alpha_bars[t1 - 1]
    t = lesson01.snr_crossing(s, lesson01.SNR_LEVEL)
    assert s.log_snr[t] < torch.log(torch.tensor(lesson01.SNR_LEVEL)) <= s.log_snr[t - 1]
    assert (t1, t) == (259, 485)


@pytest.mark.parametrize("offset", [-lesson01.SNR_CROSSING_TOL, 0, 1, lesson01.SNR_CROSSING_TOL])
def test_snr_crossing_accepts_answers_within_tolerance(offset, capsys):
    right = lesson01.snr_crossing(lesson01._linear(), lesson01.SNR_LEVEL)
    lesson01.check_snr_crossing(right + offset)
    lesson01.check_snr_crossing(float(right + offset))  # 485.0 is a whole number too
    lesson01.check_snr_crossing(torch.tensor(right + offset))
    assert "✅ Exercise 1.6 passed" in capsys.readouterr().out


def test_snr_crossing_stub_cell_raises_not_implemented():
    # In exercises/, the answer cell's marked block becomes this raise, before the check runs.
    cell = 'raise NotImplementedError("Exercise 1.6: stub")\nlesson01.check_snr_crossing(answer)'
    with pytest.raises(NotImplementedError):
        exec(cell, {"lesson01": lesson01})


@pytest.mark.parametrize("answer, words", [
    (100, "go to larger t"),                   # too early: SNR still above 0.1
    (400, "go to larger t"),
    (259, "where SNR drops below 1 "),         # the SNR = 1 crossing of the lesson, not 0.1
    (674, "where SNR drops below 0.01"),       # one decade too far
    (999, "find the *first* t"),
    (0.0993, "whole number"),                  # the SNR value, not t
    (-2.3, "whole number"),                    # the log-SNR value
    (1000, "valid ones are 0..999"),           # out of range
    ("485", "whole number"),
    (None, "whole number"),
])
def test_snr_crossing_wrong_answers_get_hints(answer, words):
    with pytest.raises(ExerciseError) as info:
        lesson01.check_snr_crossing(answer)
    assert words in str(info.value), str(info.value)
