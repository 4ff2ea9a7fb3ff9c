"""Lesson 07 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError whose hint names the mistake."""

import pytest
import torch

from course_lib import guidance
from course_lib.checks import ExerciseError, lesson07


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 7.x: stub")


# ---------------------------------------------------------------------------------------- 7.1

def good_drop(y, p, null_class, generator=None):
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def bernoulli_drop(y, p, null_class, generator=None):
    drop = torch.bernoulli(torch.full(y.shape, float(p), device=y.device), generator=generator).bool()
    return y.masked_fill(drop, null_class)


def drop_one_minus_p(y, p, null_class, generator=None):
    return good_drop(y, 1 - p, null_class, generator)


def drop_whole_batch(y, p, null_class, generator=None):
    if torch.rand((), generator=generator) < p:
        return torch.full_like(y, null_class)
    return y.clone()


def drop_to_zero(y, p, null_class, generator=None):
    return good_drop(y, p, 0, generator)


def drop_to_random_class(y, p, null_class, generator=None):
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.randint(0, null_class, y.shape, generator=generator), y)


def drop_same_mask(y, p, null_class, generator=None):
    return good_drop(y, p, null_class, torch.Generator().manual_seed(0))  # a fresh generator, re-seeded every call


def drop_no_generator(y, p, null_class, generator=None):
    return good_drop(y, p, null_class, None)


def drop_in_place(y, p, null_class, generator=None):
    y[torch.rand(y.shape, generator=generator) < p] = null_class
    return y


def drop_float(y, p, null_class, generator=None):
    return good_drop(y, p, null_class, generator).float()


def drop_le(y, p, null_class, generator=None):
    drop = torch.rand(y.shape, generator=generator, device=y.device) <= p
    return torch.where(drop, torch.full_like(y, null_class), y)


def drop_cpu_mask(y, p, null_class, generator=None):
    """Right on the CPU, but the mask drawn there: on the GPU, with train()'s generator there, torch.rand raises."""
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def test_drop_labels_references_pass(capsys):
    lesson07.check_drop_labels(good_drop)
    lesson07.check_drop_labels(bernoulli_drop)
    lesson07.check_drop_labels(drop_le)  # <= p is fine in practice (rand is never exactly p)
    assert "Exercise 7.1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (drop_one_minus_p, "probability 1 - p"),
    (drop_whole_batch, "whole batch at once"),
    (drop_to_zero, "null class not used"),
    (drop_to_random_class, "null class not used"),
    (drop_same_mask, "same dropout mask reused"),
    (drop_no_generator, "generator=generator"),
    (drop_in_place, "in place"),
    (drop_float, "integers"),
])
def test_drop_labels_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson07.check_drop_labels(fn)


def test_drop_labels_on_the_cpu_only_fails_with_the_device_hint():
    """The device probe (labels on the meta device): a mask drawn on the CPU is named, with the fix."""
    with pytest.raises(ExerciseError) as info:
        lesson07.check_drop_labels(drop_cpu_mask)
    message = str(info.value)
    assert "7.1" in message and "your drop_labels raised" in message
    assert "created a tensor on the CPU while y was on another device" in message
    assert "torch.rand(y.shape, generator=generator, device=y.device)" in message


# ---------------------------------------------------------------------------------------- 7.2

def good_guided(net, x_t, t, y, s, null_class):
    null = torch.full_like(y, null_class)
    eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    eps_c, eps_u = eps.chunk(2)
    return eps_u + s * (eps_c - eps_u)


def _pair(net, x_t, t, y, null):
    eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    return eps.chunk(2)


def guided_ho_w(net, x_t, t, y, s, null_class):
    eps_c, eps_u = _pair(net, x_t, t, y, torch.full_like(y, null_class))
    return (1 + s) * eps_c - s * eps_u


def guided_s_minus_1(net, x_t, t, y, s, null_class):
    eps_c, eps_u = _pair(net, x_t, t, y, torch.full_like(y, null_class))
    return eps_u + (s - 1) * (eps_c - eps_u)


def guided_swapped(net, x_t, t, y, s, null_class):
    eps_u, eps_c = _pair(net, x_t, t, y, torch.full_like(y, null_class))  # halves read in the wrong order
    return eps_u + s * (eps_c - eps_u)


def guided_no_null(net, x_t, t, y, s, null_class):
    eps_c, eps_u = _pair(net, x_t, t, y, y)
    return eps_u + s * (eps_c - eps_u)


def guided_label_zero(net, x_t, t, y, s, null_class):
    eps_c, eps_u = _pair(net, x_t, t, y, torch.zeros_like(y))
    return eps_u + s * (eps_c - eps_u)


def guided_two_passes(net, x_t, t, y, s, null_class):
    eps_c, eps_u = net(x_t, t, y), net(x_t, t, torch.full_like(y, null_class))
    return eps_u + s * (eps_c - eps_u)


def guided_wrong_sign(net, x_t, t, y, s, null_class):
    eps_c, eps_u = _pair(net, x_t, t, y, torch.full_like(y, null_class))
    return eps_u + s * (eps_u - eps_c)


def test_guided_eps_references_pass(capsys):
    lesson07.check_guided_eps(good_guided)
    lesson07.check_guided_eps(lambda net, x, t, y, s, null: guidance.classifier_free(net, y, s, null)(x, t))
    assert "Exercise 7.2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (guided_ho_w, "w and s confused"),
    (guided_s_minus_1, "off by one"),
    (guided_swapped, "eps_c and eps_u swapped"),
    (guided_no_null, "null class not used"),
    (guided_label_zero, "null class not used"),
    (guided_two_passes, "two separate passes"),
    (guided_wrong_sign, "sign of the guidance direction"),
])
def test_guided_eps_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson07.check_guided_eps(fn)


# ---------------------------------------------------------------------------------------- 7.3

def good_to_s(value, convention):
    if convention in ("course", "diffusers", "lerp"):
        return float(value)
    if convention == "ho_salimans":
        return 1.0 + value
    raise ValueError(f"unknown convention {convention!r}")


def _to_s_with(**changes):
    def fn(value, convention):
        if convention in changes:
            return changes[convention](value)
        return good_to_s(value, convention)
    return fn


def to_s_no_error(value, convention):
    return 1.0 + value if convention == "ho_salimans" else float(value)


def test_to_course_s_references_pass(capsys):
    lesson07.check_to_course_s(good_to_s)
    lesson07.check_to_course_s(lambda v, c: guidance.s_from(c, v))
    assert "Exercise 7.3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_to_s_with(ho_salimans=lambda w: w), "w and s confused"),
    (_to_s_with(ho_salimans=lambda w: w - 1), "off by one"),
    (_to_s_with(lerp=lambda w: 1 - w), "lerp weight w IS s"),
    (_to_s_with(diffusers=lambda g: g + 1), "already the course's s"),
    (to_s_no_error, "missing ValueError"),
    (_to_s_with(ho_salimans=lambda w: 2 + w), "read off s"),
])
def test_to_course_s_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson07.check_to_course_s(fn)


# ---------------------------------------------------------------------------------------- 7.4

@pytest.fixture
def fake_batch(monkeypatch):
    """Every digit right from s = 1.25 on (as measured for the lesson's batch); no sampling needed."""
    def correct_at(net, schedule, x_T, labels, s, steps, null_class=None, clip_x0=True):
        return len(labels) if s >= 1.25 - 1e-9 else {0.0: 2, 0.25: 3, 0.5: 5, 0.75: 17, 1.0: 19}[round(s, 2)]
    monkeypatch.setattr(lesson07, "correct_at", correct_at)
    return dict(net=None, schedule=None, x_T=None, labels=torch.arange(20) % 10, steps=20)


def test_smallest_s_right_answer_passes(fake_batch, capsys):
    lesson07.check_smallest_s(1.25, **fake_batch)
    assert "Exercise 7.4 passed" in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [
    (0.25, "w and s confused"),
    (1.5, "SMALLEST"),
    (1.0, "only 19 of 20"),
    (1.3, "grid"),
    (-1.0, "s >= 0"),
    ("1.25", "s >= 0"),
])
def test_smallest_s_mistakes_are_named(fake_batch, answer, words):
    with pytest.raises(ExerciseError, match=words):
        lesson07.check_smallest_s(answer, **fake_batch)


def test_correct_at_samples_the_real_model():
    from course_lib import pretrained
    pipe = pretrained.load("mnist-unet")
    labels = torch.tensor([0, 1])
    x_T = torch.randn((2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    n = lesson07.correct_at(pipe.model, pipe.schedule, x_T, labels, 3.0, steps=3)
    assert 0 <= n <= 2


# ---------------------------------------------------------------------------------------- stubs

@pytest.mark.parametrize("check", [lesson07.check_drop_labels, lesson07.check_guided_eps, lesson07.check_to_course_s])
def test_stub_propagates(check):
    with pytest.raises(NotImplementedError):
        check(_stub)
