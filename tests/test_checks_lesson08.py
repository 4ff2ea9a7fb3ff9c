"""Lesson 08 checks: the reference solutions pass, stubs propagate NotImplementedError, and plausible
wrong implementations raise ExerciseError whose hint names the mistake."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from course_lib import latent
from course_lib.checks import ExerciseError, lesson08
from course_lib.nets import attention_weights


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 8.x: stub")


# ---------------------------------------------------------------------------------------- 8.1

def good_attention(q, k, v, key_mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[..., None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def library_attention(q, k, v, key_mask=None):
    w = attention_weights(q, k, key_mask)
    return w @ v, w


def _att(scale, dim=-1, mask_mode="fill"):
    def fn(q, k, v, key_mask=None):
        scores = q @ k.transpose(-2, -1) * scale(q.shape[-1])
        if key_mask is not None:
            m = key_mask[..., None, :]
            if mask_mode == "fill":
                scores = scores.masked_fill(~m, float("-inf"))
            elif mask_mode == "inverted":
                scores = scores.masked_fill(m, float("-inf"))
            elif mask_mode == "multiply":
                scores = scores * m
        weights = scores.softmax(dim=dim)
        if key_mask is not None and mask_mode == "after":
            weights = weights * key_mask[..., None, :]
        return weights @ v, weights
    return fn


def att_out_only(q, k, v, key_mask=None):
    return good_attention(q, k, v, key_mask)[0]


def att_no_none(q, k, v, key_mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_mask is None:
        scores = scores * 1.5  # something wrong only without a mask
    else:
        scores = scores.masked_fill(~key_mask[..., None, :], float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


def test_attention_references_pass(capsys):
    lesson08.check_attention(good_attention)
    lesson08.check_attention(library_attention)
    assert "Exercise 8.1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_att(lambda d: 1.0), "missing 1/sqrt"),
    (_att(lambda d: 1 / d), "instead of sqrt"),
    (_att(lambda d: d ** -0.5, dim=-2), "wrong axis"),
    (_att(lambda d: d ** -0.5, mask_mode="none"), "mask ignored"),
    (_att(lambda d: d ** -0.5, mask_mode="inverted"), "mask inverted"),
    (_att(lambda d: d ** -0.5, mask_mode="multiply"), "multiplying the scores"),
    (_att(lambda d: d ** -0.5, mask_mode="after"), "after the softmax"),
    (att_out_only, "expected a pair"),
    (att_no_none, "off"),
])
def test_attention_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson08.check_attention(fn)


# ---------------------------------------------------------------------------------------- 8.2

def good_scale(autoencoder, images):
    with torch.no_grad():
        z = autoencoder.encode(images)
    return 1.0 / z.flatten().std().item()


def good_scale_batched_tensor(autoencoder, images):
    with torch.no_grad():
        z = torch.cat([autoencoder.encode(images[i:i + 10]) for i in range(0, len(images), 10)])
    return 1 / z.std()  # a 0-dim tensor is fine


def _scale(fn):
    def scale(autoencoder, images):
        with torch.no_grad():
            return fn(autoencoder.encode(images).double())
    return scale


def test_scale_factor_references_pass(capsys):
    lesson08.check_scale_factor(good_scale)
    lesson08.check_scale_factor(good_scale_batched_tensor)
    lesson08.check_scale_factor(latent.latent_scale_factor)
    assert "Exercise 8.2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_scale(lambda z: z.std().item()), "std instead of 1/std"),
    (_scale(lambda z: 1 / z.var().item()), "1/variance"),
    (_scale(lambda z: 1 / z.square().mean().sqrt().item()), "root mean square"),
    (_scale(lambda z: 1 / z.transpose(0, 1).flatten(1).std(1)), "per channel"),
    (_scale(lambda z: (1 / z.transpose(0, 1).flatten(1).std(1)).mean().item()), "per channel"),
    (_scale(lambda z: 1 / z.transpose(0, 1).flatten(1).std(1).mean().item()), "per channel"),
    (_scale(lambda z: 1 / z.flatten(1).std(1).mean().item()), "per image"),
    (_scale(lambda z: 1 / z.abs().max().item()), "range"),
    (_scale(lambda z: 0.5), "expected"),
    (lambda ae, images: 1 / images.std().item(), "never called autoencoder.encode"),
])
def test_scale_factor_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson08.check_scale_factor(fn)


# ---------------------------------------------------------------------------------------- 8.3

def good_tokenize(prompt):
    words = re.sub(r"[^\w\s]", " ", prompt.lower()).split()
    unknown = [w for w in words if w not in latent.WORDS]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown}; the vocabulary is: {' '.join(latent.WORDS)}")
    if len(words) > latent.MAX_LEN - 1:
        raise ValueError("prompt too long")
    ids = [latent.TOKEN_ID[latent.START]] + [latent.TOKEN_ID[w] for w in words]
    tokens = torch.full((latent.MAX_LEN,), latent.TOKEN_ID[latent.PAD], dtype=torch.long)
    tokens[:len(ids)] = torch.tensor(ids)
    return tokens, tokens != latent.TOKEN_ID[latent.PAD]


def _tok(lower=True, strip=True, start=True, pad=True, pad_id=None, invert=False, check_unknown=True, message=True,
         check_length=True):
    def fn(prompt):
        text = prompt.lower() if lower else prompt
        if strip:
            text = re.sub(r"[^\w\s]", " ", text)
        words = text.split()
        unknown = [w for w in words if w not in latent.WORDS]
        if unknown and check_unknown:
            raise ValueError(f"unknown word(s) {unknown}" + (f"; vocabulary: {' '.join(latent.WORDS)}" if message else ""))
        words = [w for w in words if w in latent.WORDS]
        if check_length and len(words) > latent.MAX_LEN - 1:
            raise ValueError("too long")
        ids = ([latent.TOKEN_ID[latent.START]] if start else []) + [latent.TOKEN_ID[w] for w in words]
        ids = ids[:latent.MAX_LEN]
        if pad:
            fill = latent.TOKEN_ID[latent.PAD] if pad_id is None else pad_id
            ids = ids + [fill] * (latent.MAX_LEN - len(ids))
        tokens = torch.tensor(ids, dtype=torch.long)
        mask = torch.arange(len(tokens)) < len(words) + int(start)
        return tokens, ~mask if invert else mask
    return fn


def test_tokenize_references_pass(capsys):
    lesson08.check_tokenize(good_tokenize)
    lesson08.check_tokenize(lambda p: tuple(x[0] for x in latent.tokenize(p)))
    assert "Exercise 8.3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_tok(lower=False), "case not lowered"),
    (_tok(strip=False), "punctuation not stripped"),
    (_tok(lower=False, strip=False), "case not lowered and punctuation not stripped"),
    (_tok(start=False), "START missing"),
    (_tok(pad=False), "padding not applied"),
    (_tok(pad=False, start=False), "START missing and no padding"),
    (_tok(pad_id=latent.TOKEN_ID[latent.START]), "padding with the wrong id"),
    (_tok(invert=True), "mask inverted"),
    (_tok(check_unknown=False), "unknown word accepted"),
    (_tok(message=False), "list the vocabulary"),
    (_tok(check_length=False), "prompt too long accepted"),
])
def test_tokenize_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson08.check_tokenize(fn)


# ---------------------------------------------------------------------------------------- 8.4

def good_guided(model, z_t, t, prompts, s):
    B = len(prompts)
    context, mask = model.encode_text(list(prompts) + [""] * B)
    eps_c, eps_u = model(torch.cat([z_t, z_t]), torch.cat([t, t]), context, mask).chunk(2)
    return eps_u + s * (eps_c - eps_u)


def _pair(model, z_t, t, prompts, null="", use_mask=True):
    B = len(prompts)
    nulls = [null] * B if isinstance(null, str) else null
    context, mask = model.encode_text(list(prompts) + list(nulls))
    return model(torch.cat([z_t, z_t]), torch.cat([t, t]), context, mask if use_mask else None).chunk(2)


def _guided(combine, **kwargs):
    def fn(model, z_t, t, prompts, s):
        eps_c, eps_u = _pair(model, z_t, t, prompts, **kwargs)
        return combine(eps_c, eps_u, s)
    return fn


def guided_two_passes(model, z_t, t, prompts, s):
    c1, m1 = model.encode_text(list(prompts))
    c0, m0 = model.encode_text([""] * len(prompts))
    eps_c, eps_u = model(z_t, t, c1, m1), model(z_t, t, c0, m0)
    return eps_u + s * (eps_c - eps_u)


def guided_prompts_twice(model, z_t, t, prompts, s):
    eps_c, eps_u = _pair(model, z_t, t, prompts, null=prompts)
    return eps_u + s * (eps_c - eps_u)


def test_guided_eps_references_pass(capsys):
    lesson08.check_guided_eps(good_guided)
    lesson08.check_guided_eps(_guided(lambda c, u, s: u + s * (c - u), null=" "))  # " " is the null prompt too
    assert "Exercise 8.4 passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (_guided(lambda c, u, s: c + s * (u - c)), "cond and null swapped"),
    (_guided(lambda c, u, s: (1 + s) * c - s * u), "wrong term"),
    (_guided(lambda c, u, s: u + s * c - u), "wrong term"),
    (_guided(lambda c, u, s: s * u + (c - u)), "wrong term"),
    (_guided(lambda c, u, s: u + (s - 1) * (c - u)), "off by one"),
    (guided_prompts_twice, "null prompt not used"),
    (_guided(lambda c, u, s: u + s * (c - u), use_mask=False), "key mask not passed"),
    (guided_two_passes, "two separate passes"),
])
def test_guided_eps_mistakes_are_named(fn, words):
    with pytest.raises(ExerciseError, match=words):
        lesson08.check_guided_eps(fn)


def test_tiny_model_makes_the_prompt_matter():
    """The check's model must tell the prompt, the null prompt and the mask apart (at init it would not)."""
    net = lesson08._tiny_latent_model()
    z = torch.randn((2, *net.latent_shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 800])
    c, m = net.encode_text(["a thick seven", "an 8"])
    c0, m0 = net.encode_text(["", ""])
    with torch.no_grad():
        a, b, nomask = net(z, t, c, m), net(z, t, c0, m0), net(z, t, c, None)
    assert (a - b).abs().max() > 1e-3 and (a - nomask).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------- 8.5

@pytest.fixture
def fake_reading(monkeypatch):
    """A fake widget: 'a thin four' reads as four thin 4s for 1 <= s <= 2, as 4s of middle ink above, and as a mix of
    digits below s = 1; 'a thick four' all thick from s = 4; 'a four' as 4s of middle ink; anything else as 1s."""
    def widget_reading(pipe, prompt, s, n=4, steps=25, seed=0):
        words = latent.words(prompt)
        if s < 1:
            return torch.tensor([4, 9, 1, 4])[:n], torch.zeros(n, dtype=torch.long)
        if "four" in words or "4" in words:
            if "thin" in words:
                return torch.full((n,), 4), torch.tensor([0, 0, 0, 1] if s <= 2 else [1, 1, 2, 2])[:n]
            if "thick" in words:
                return torch.full((n,), 4), torch.tensor([2, 2, 2, 2] if s >= 4 else [1, 1, 2, 2])[:n]
            return torch.full((n,), 4), torch.ones(n, dtype=torch.long)
        return torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    monkeypatch.setattr(lesson08, "widget_reading", widget_reading)
    return dict(pipe=None, digit=4, thickness=0, need=3)


def test_prompt_goal_right_answer_passes(fake_reading, capsys):
    lesson08.check_prompt_goal("a thin four", 1.0, **fake_reading)
    lesson08.check_prompt_goal("A thin 4.", 1.0, **fake_reading)
    lesson08.check_prompt_goal("a thin four", 2.0, **fake_reading, smallest=False)
    assert "Exercise 8.5 passed" in capsys.readouterr().out


@pytest.mark.parametrize("prompt, s, words", [
    ("a thin four", 3.0, "followed too weakly"),
    ("a thin four", 2.0, "SMALLEST"),
    ("a thin four", 0.5, "only 2 of 4"),
    ("a four", 1.0, "name the attribute"),
    ("a thin one", 1.0, "name the digit"),
    ("a skinny four", 1.0, "cannot be tokenised"),
    ("a thin four", 2.2, "grid"),
    ("a thin four", float("nan"), "guidance scale"),
    (4, 1.0, "string"),
])
def test_prompt_goal_mistakes_are_named(fake_reading, prompt, s, words):
    with pytest.raises(ExerciseError, match=words):
        lesson08.check_prompt_goal(prompt, s, **fake_reading)


def test_prompt_goal_thick(fake_reading, capsys):
    with pytest.raises(ExerciseError, match="followed too weakly"):
        lesson08.check_prompt_goal("a thick four", 3.0, **{**fake_reading, "thickness": 2, "need": 4})
    lesson08.check_prompt_goal("a thick four", 4.0, **{**fake_reading, "thickness": 2, "need": 4})
    assert "s = 3.5, it fails" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- stubs

@pytest.mark.parametrize("check", [lesson08.check_attention, lesson08.check_scale_factor, lesson08.check_tokenize,
                                   lesson08.check_guided_eps])
def test_stub_propagates(check):
    with pytest.raises(NotImplementedError):
        check(_stub)


def test_attention_check_agrees_with_torch_sdpa():
    """The check's reference is torch's own fused attention (as the exercise says)."""
    q, k, v = (torch.randn(2, 3, 4, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])[:, None]
    out, _ = good_attention(q, k, v, mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., None, :]))
