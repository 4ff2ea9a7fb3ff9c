"""Lesson 09 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError whose hint names the mistake."""

import pytest
import torch

from course_lib import inpainting
from course_lib.checks import ExerciseError, lesson09


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 9.x: stub")


# ---------------------------------------------------------------------------------------- 9.1

def good_noised(x_known, t, schedule, generator=None):
    alpha_bar = schedule.alpha_bars[t]
    z = torch.randn(x_known.shape, generator=generator).to(x_known.device)
    return alpha_bar.sqrt() * x_known + (1 - alpha_bar).sqrt() * z


def noised_cpu_noise(x_known, t, schedule, generator=None):
    """Right on the CPU, but z stays there: on the GPU, adding it to x_known raises."""
    alpha_bar = schedule.alpha_bars[t]
    z = torch.randn(x_known.shape, generator=generator)
    return alpha_bar.sqrt() * x_known + (1 - alpha_bar).sqrt() * z


def _noised_with(signal, noise, shift=0):
    def fn(x_known, t, schedule, generator=None):
        a = schedule.alpha_bars[t + shift]
        return signal(a) * x_known + noise(a) * torch.randn(x_known.shape, generator=generator)
    return fn


def noised_clean(x_known, t, schedule, generator=None):
    return x_known.clone()


def noised_fixed_noise(x_known, t, schedule, generator=None):
    return good_noised(x_known, t, schedule, torch.Generator().manual_seed(0))


def noised_no_generator(x_known, t, schedule, generator=None):
    return good_noised(x_known, t, schedule, None)


def noised_in_place(x_known, t, schedule, generator=None):
    a = schedule.alpha_bars[t]
    return x_known.mul_(a.sqrt()).add_((1 - a).sqrt() * torch.randn(x_known.shape, generator=generator))


def noised_wrong_shape(x_known, t, schedule, generator=None):
    return good_noised(x_known, t, schedule, generator)[0]


def test_noised_known_references_pass(capsys):
    lesson09.check_noised_known(good_noised)
    lesson09.check_noised_known(inpainting.noised_known)
    lesson09.check_noised_known(lambda x, t, s, g: inpainting.noised_known(x, t, s, generator=g).double())
    assert "Exercise 9.1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (noised_clean, "pasting clean x_known"),
    (_noised_with(lambda a: a.sqrt(), lambda a: 1 - a), "noise not square-rooted"),
    (_noised_with(lambda a: a, lambda a: 1 - a), "square roots missing"),
    (_noised_with(lambda a: a, lambda a: (1 - a).sqrt()), "not alpha_bar_t"),
    (_noised_with(lambda a: a.sqrt(), lambda a: 1.0), "full strength"),
    (_noised_with(lambda a: (1 - a).sqrt(), lambda a: a.sqrt()), "coefficients swapped"),
    (_noised_with(lambda a: a.sqrt(), lambda a: (1 - a).sqrt(), shift=1), "off by one"),
    (_noised_with(lambda a: a.sqrt(), lambda a: (1 - a).sqrt(), shift=-1), "off by one"),
    (_noised_with(lambda a: a.sqrt(), lambda a: 0.9 * (1 - a).sqrt()), r"(?s)expected .* Hint: alpha_bar = "),
    (noised_fixed_noise, "reusing a fixed noise draw"),
    (noised_no_generator, "generator=generator"),
    (noised_in_place, "in place"),
    (noised_wrong_shape, "shape"),
])
def test_noised_known_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson09.check_noised_known(fn)


# ---------------------------------------------------------------------------------------- 9.2

def good_undo(x_prev, t_prev, t, schedule, generator=None):
    ratio = schedule.alpha_bars[t] / schedule.alpha_bars[t_prev]
    return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * torch.randn(x_prev.shape, generator=generator).to(x_prev.device)


def undo_cpu_noise(x_prev, t_prev, t, schedule, generator=None):
    """Right on the CPU, but z stays there."""
    ratio = schedule.alpha_bars[t] / schedule.alpha_bars[t_prev]
    return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * torch.randn(x_prev.shape, generator=generator)


def good_undo_one_step_at_a_time(x_prev, t_prev, t, schedule, generator=None):
    x = x_prev
    for s in range(t_prev + 1, t + 1):
        beta = schedule.betas[s]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=generator).to(x.device)
    return x


def _undo_with(signal, noise):
    def fn(x_prev, t_prev, t, schedule, generator=None):
        a_prev, a_t = schedule.alpha_bars[t_prev], schedule.alpha_bars[t]
        return signal(a_prev, a_t) * x_prev + noise(a_prev, a_t) * torch.randn(x_prev.shape, generator=generator)
    return fn


def undo_one_beta(x_prev, t_prev, t, schedule, generator=None):
    beta = schedule.betas[t]
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * torch.randn(x_prev.shape, generator=generator)


def undo_beta_prev(x_prev, t_prev, t, schedule, generator=None):  # Algorithm 1 line 10 read with beta_{t-1}
    beta = schedule.betas[t_prev]
    out = x_prev
    for _ in range(t - t_prev):
        out = (1 - beta).sqrt() * out + beta.sqrt() * torch.randn(x_prev.shape, generator=generator)
    return out


def undo_fixed_noise(x_prev, t_prev, t, schedule, generator=None):
    return good_undo(x_prev, t_prev, t, schedule, torch.Generator().manual_seed(0))


def undo_identity(x_prev, t_prev, t, schedule, generator=None):
    return x_prev.clone()


@pytest.mark.parametrize("check, fn, exercise, name, tensor", [
    (lesson09.check_noised_known, noised_cpu_noise, "9.1", "noised_known", "x_known"),
    (lesson09.check_undo_step, undo_cpu_noise, "9.2", "undo_step", "x_prev"),
])
def test_noise_on_the_cpu_only_fails_with_the_device_hint(check, fn, exercise, name, tensor):
    """The device probe (the input on the meta device, a CPU generator): noise left on the CPU is named, with the fix."""
    with pytest.raises(ExerciseError) as info:
        check(fn)
    message = str(info.value)
    assert exercise in message and f"your {name} raised" in message
    assert f"created a tensor on the CPU while {tensor} was on another device" in message
    assert f"torch.randn({tensor}.shape, generator=generator).to({tensor}.device)" in message


def test_undo_step_references_pass(capsys):
    lesson09.check_undo_step(good_undo)
    lesson09.check_undo_step(good_undo_one_step_at_a_time)  # the composition of one-step jumps is the same draw law
    lesson09.check_undo_step(inpainting.undo_step)
    assert "Exercise 9.2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_undo_with(lambda p, a: (a / p).sqrt(), lambda p, a: 1 - a / p), "noise not square-rooted \\(the paper's misprint\\)"),
    (_undo_with(lambda p, a: (a / p).sqrt(), lambda p, a: (1 - a).sqrt()), "1 - alpha_bar_t instead of the ratio"),
    (_undo_with(lambda p, a: a.sqrt(), lambda p, a: (1 - a).sqrt()), "1 - alpha_bar_t instead of the ratio"),
    (_undo_with(lambda p, a: (a / p).sqrt(), lambda p, a: 0.0), "no noise"),
    (_undo_with(lambda p, a: a / p, lambda p, a: (1 - a / p).sqrt()), "not by the ratio itself"),
    (_undo_with(lambda p, a: (p / a).sqrt(), lambda p, a: (1 - p / a).sqrt()), "ratio inverted"),
    (undo_identity, "no noise and no scaling"),
    (undo_one_beta, "one beta for a jump over"),
    (undo_beta_prev, "off by one"),
    (undo_fixed_noise, "reusing a fixed noise draw"),
    (_undo_with(lambda p, a: (a / p).sqrt(), lambda p, a: 0.8 * (1 - a / p).sqrt()), "Hint: ratio = "),
])
def test_undo_step_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson09.check_undo_step(fn)


# ---------------------------------------------------------------------------------------- 9.3

def good_order(steps, jump_length, jump_n_sample):
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    order, i = [], steps
    while i >= 1:
        i -= 1
        order.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(jump_length):
                i += 1
                order.append(i)
    return order


def _order_with(**knobs):
    return lambda steps, jl, jn: lesson09._order(steps, jl, jn, **knobs)


def order_jump_one_more(steps, jl, jn):
    return lesson09._order(steps, jl, jn, up=jl + 1)


def order_scaled(steps, jl, jn):
    return inpainting.repaint_timesteps(steps, jl, jn).tolist()  # T = 1000: scaled by T // steps


def order_with_clean_end(steps, jl, jn):
    return good_order(steps, jl, jn) + [-1]


def order_float(steps, jl, jn):
    return [float(i) for i in good_order(steps, jl, jn)]


def order_starts_at_steps(steps, jl, jn):
    return [steps] + good_order(steps, jl, jn)


def test_repaint_timesteps_references_pass(capsys):
    lesson09.check_repaint_timesteps(good_order)
    lesson09.check_repaint_timesteps(lambda s, jl, jn: inpainting.repaint_timesteps(s, jl, jn, T=s))  # a tensor
    lesson09.check_repaint_timesteps(lambda s, jl, jn: tuple(good_order(s, jl, jn)))
    out = capsys.readouterr().out
    assert "Exercise 9.3 passed" in out and "4,570 entries, 2,410 of them denoising steps: 9.64 x" in out


@pytest.mark.parametrize("fn, words", [
    (order_jump_one_more, "off-by-one jump"),
    (_order_with(up=None, keys=None, n_jumps=None, stop=2), "missing final steps"),
    (lambda s, jl, jn: good_order(s, jl, jn)[:-1], "missing final steps"),
    (lambda s, jl, jn: lesson09._order(s, jl, jn, keys=range(0, s - jl + 1, jl)), "off-by-one jump"),
    (lambda s, jl, jn: lesson09._order(s, jl, jn, keys=range(jl, s - jl, jl)), "missing final steps"),
    (lambda s, jl, jn: lesson09._order(s, jl, jn, n_jumps=jn), "wrong count"),
    (lambda s, jl, jn: lesson09._order(s, jl, jn, n_jumps=max(jn - 2, 0)), "wrong count"),
    (order_scaled, "grid indices, not timesteps"),
    (order_with_clean_end, "clean end -1"),
    (lambda s, jl, jn: good_order(s, jl, jn)[::-1], "reversed"),
    (order_starts_at_steps, "off by one at the start"),
    (order_float, "list of integers"),
    (lambda s, jl, jn: list(range(s - 1, -1, -1)), "Hint: jumps = "),  # no jumps at all
])
def test_repaint_timesteps_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson09.check_repaint_timesteps(fn)


# ---------------------------------------------------------------------------------------- stubs

@pytest.mark.parametrize("check", [lesson09.check_noised_known, lesson09.check_undo_step,
                                   lesson09.check_repaint_timesteps])
def test_stub_propagates(check):
    with pytest.raises(NotImplementedError):
        check(_stub)


# ======================================================================================== super-resolution
# ---------------------------------------------------------------------------------------- 9.4

import torch.nn.functional as F  # noqa: E402

from course_lib import superres  # noqa: E402


def good_sr_eps(net, x_t, t, x_lr, w):
    cond = superres.condition(x_lr)
    x_in = torch.cat([torch.cat([x_t, cond], 1), torch.cat([x_t, torch.zeros_like(cond)], 1)])  # (2B, 2, H, W)
    eps_c, eps_u = net(x_in, torch.cat([t, t])).chunk(2)
    return eps_u + w * (eps_c - eps_u)


def good_sr_eps_two_passes(net, x_t, t, x_lr, w):
    cond = F.interpolate(x_lr, size=(32, 32), mode="bicubic", align_corners=False)
    eps_c = net(torch.cat([x_t, cond], 1), t)
    eps_u = net(torch.cat([x_t, torch.zeros_like(cond)], 1), t)
    return eps_u + w * (eps_c - eps_u)


def _sr_with(cond=superres.condition, null=torch.zeros_like, order=lambda a, b: [a, b], dim=1, tt=lambda t: torch.cat([t, t]),
             combine=lambda c, u, w: u + w * (c - u)):
    def fn(net, x_t, t, x_lr, w):
        c = cond(x_lr)
        x_in = torch.cat([torch.cat(order(x_t, c), dim), torch.cat(order(x_t, null(c)), dim)])
        eps_c, eps_u = net(x_in, tt(t)).chunk(2)
        return combine(eps_c, eps_u, w)
    return fn


def sr_eps_conditional_only(net, x_t, t, x_lr, w):
    return net(torch.cat([x_t, superres.condition(x_lr)], 1), t)


def test_sr_eps_references_pass(capsys):
    lesson09.check_sr_eps(good_sr_eps)
    lesson09.check_sr_eps(good_sr_eps_two_passes)
    lesson09.check_sr_eps(lambda net, x_t, t, x_lr, w: superres.guided_model(net, superres.condition(x_lr), w)(x_t, t))
    assert "Exercise 9.4 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_sr_with(cond=lambda x: F.interpolate(x, size=(32, 32), mode="nearest")), "wrong interpolation"),
    (_sr_with(cond=lambda x: F.interpolate(x, size=(32, 32), mode="bilinear")), "wrong interpolation"),
    (_sr_with(cond=lambda x: superres.condition(x).clamp(-1, 1)), "do not clamp"),
    (_sr_with(cond=lambda x: x), "condition not upsampled"),
    (_sr_with(null=lambda c: -torch.ones_like(c)), "null condition: the training replaced"),
    (_sr_with(null=lambda c: c), "null condition not used"),
    (sr_eps_conditional_only, "null condition not used"),
    (_sr_with(null=lambda c: torch.rand(c.shape, generator=torch.Generator().manual_seed(0))), "neither the bicubic"),
    (_sr_with(order=lambda a, b: [b, a]), "channel order swapped"),
    (_sr_with(dim=0), "concatenated along the channel dimension"),
    (_sr_with(tt=lambda t: t), "one timestep per image"),
    (_sr_with(combine=lambda c, u, w: (1 + w) * c - w * u), "w and s confused"),
    (_sr_with(combine=lambda c, u, w: u + (w - 1) * (c - u)), "off by one"),
    (_sr_with(combine=lambda c, u, w: c + w * (u - c)), "eps_c and eps_u swapped"),
    (_sr_with(combine=lambda c, u, w: c), "no guidance"),
    (_sr_with(combine=lambda c, u, w: u + 0.9 * w * (c - u)), "Hint: cond = F.interpolate"),
])
def test_sr_eps_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson09.check_sr_eps(fn)


def test_sr_eps_in_place_is_named():
    def in_place(net, x_t, t, x_lr, w):
        out = good_sr_eps(net, x_t, t, x_lr, w)
        x_lr.clamp_(-0.5, 0.5)
        return out
    with pytest.raises(ExerciseError, match="in place"):
        lesson09.check_sr_eps(in_place)


# ---------------------------------------------------------------------------------------- 9.5

@pytest.fixture
def fake_columns(monkeypatch):
    """Completions keep the digit in 4 of 4 up to 10 columns, then 2, then (from 14 on) 1, 0, ...; no sampling."""
    table = {0: 4, 2: 4, 4: 4, 6: 3, 8: 4, 10: 2, 12: 2, 14: 1, 16: 0}

    def kept_at(model, schedule, x0, label, columns, x_T, steps, seed, method="replace"):
        return table.get(columns, 0)
    monkeypatch.setattr(lesson09, "kept_at", kept_at)
    return dict(model=None, schedule=None, x0=torch.zeros(1, 1, 32, 32), label=7, x_T=torch.zeros(4, 1, 32, 32),
                steps=25, seed=1)


def test_smallest_columns_right_answer_passes(fake_columns, capsys):
    lesson09.check_smallest_columns(14, **fake_columns)
    lesson09.check_smallest_columns(14.0, **fake_columns)
    out = capsys.readouterr().out
    assert "Exercise 9.5 passed" in out and "(1 of 4; at 12 columns 2 of 4 did)" in out and "44% of the pixels" in out


@pytest.mark.parametrize("answer, words", [
    (12, "2 of 4 completions are still read"),
    (16, "SMALLEST"),
    (13, "grid"),
    (0.44, "fraction of the image"),
    (40, "outside the slider's range"),
    ("14", "whole number of columns"),
    (True, "whole number of columns"),
])
def test_smallest_columns_mistakes_are_named(fake_columns, answer, words):
    with pytest.raises(ExerciseError, match=words):
        lesson09.check_smallest_columns(answer, **fake_columns)


def test_kept_at_inpaints_with_the_real_model():
    from course_lib import guidance, metrics, pretrained
    pipe = pretrained.load("mnist-unet")
    x, y = metrics.heldout_digits(3)
    x_T = torch.randn((2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    model = guidance.unconditional(pipe.model)
    # nothing masked: the completions are the digit itself, which the classifier reads right
    assert lesson09.kept_at(model, pipe.schedule, x[1:2], int(y[1]), 0, x_T, steps=2, seed=1) == 2
    assert 0 <= lesson09.kept_at(model, pipe.schedule, x[1:2], int(y[1]), 16, x_T, steps=2, seed=1) <= 2


@pytest.mark.parametrize("check", [lesson09.check_sr_eps])
def test_sr_stub_propagates(check):
    with pytest.raises(NotImplementedError):
        check(_stub)
