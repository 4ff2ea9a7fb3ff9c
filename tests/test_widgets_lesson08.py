"""Lesson 08's widget, driven headless: type a prompt (set ``.value``), move the guidance slider, check what it drew."""

import types

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import latent, metrics, widgets  # noqa: E402
from course_lib.checks import lesson08  # noqa: E402
from course_lib.schedules import make_schedule  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = latent.LatentDiffusion(ae_width=8, context_dim=16, text_layers=1, unet_channels=(16, 32), unet_blocks=1,
                                   heads=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return types.SimpleNamespace(model=model.eval().requires_grad_(False), schedule=make_schedule("linear", 1000))


def _expected(pipe, prompt, s, n, steps, seed):
    return latent.text_to_image(pipe, [prompt] * n, steps=steps, w=s, generator=torch.Generator().manual_seed(seed),
                                return_attention=True)


def test_prompt_explorer_draws_the_typed_prompt(pipe):
    w = widgets.prompt_explorer(pipe, prompt="a thick seven", w=3.0, steps=3, n=2, generator_seed=4)
    assert w.samples.shape == (2, 1, 32, 32)
    assert w.tokens == ["<s>", "a", "thick", "seven"] and w.maps.shape == (2, 4, 32, 32)
    assert torch.allclose(w.maps.sum(1), torch.ones(2, 32, 32), atol=1e-5)  # the real tokens share all the attention
    first = w.samples.clone()

    w.prompt.value = "An 8, slanted left."
    x, maps = _expected(pipe, "An 8, slanted left.", 3.0, 2, 3, 4)
    assert torch.equal(w.samples, x) and torch.equal(w.maps, maps[:, :5])
    assert w.tokens == ["<s>", "an", "8", "slanted", "left"]
    assert not torch.allclose(w.samples, first)
    assert torch.equal(w.predicted, metrics.predict_labels(w.samples))
    assert torch.allclose(w.ink, latent.ink(w.samples)) and torch.allclose(w.slant, latent.slant(w.samples))
    assert "s = 3.0" in w.readout.value and "slanted" in w.readout.value and w.error is None
    # what the exercise's check sees is what the widget shows
    predicted, thirds = lesson08.widget_reading(pipe, "An 8, slanted left.", 3.0, n=2, steps=3, seed=4)
    assert torch.equal(predicted, w.predicted) and thirds.tolist() == w.thickness

    w.w.value = 6.0
    x, _ = _expected(pipe, "An 8, slanted left.", 6.0, 2, 3, 4)
    assert torch.equal(w.samples, x)  # the same noise, another s
    assert "s = 6.0" in w.readout.value
    assert all(c in (0, 1, 2) for c in w.thickness + w.slant_class)


def test_widget_reading_calls_text_to_image_as_the_widget_does(pipe, monkeypatch):
    """Exercise 8.5's check reads the very images the widget shows, bit for bit: the same call, return_attention=True
    included (it runs the explicit softmax instead of the fused attention, which rounds differently)."""
    calls = []
    text_to_image = latent.text_to_image

    def spy(*args, **kwargs):
        out = text_to_image(*args, **kwargs)
        images = out[0] if isinstance(out, tuple) else out
        calls.append((args, {k: v for k, v in kwargs.items() if k != "generator"}, images))
        return out

    monkeypatch.setattr(latent, "text_to_image", spy)
    w = widgets.prompt_explorer(pipe, prompt="a thin two", w=2.5, steps=3, n=2, generator_seed=5)
    predicted, thirds = lesson08.widget_reading(pipe, "a thin two", 2.5, n=2, steps=3, seed=5)
    (widget_args, widget_kwargs, shown), (check_args, check_kwargs, read) = calls
    assert widget_args == check_args and widget_kwargs == check_kwargs and check_kwargs["return_attention"] is True
    assert torch.equal(read, shown) and torch.equal(w.samples, read.cpu())
    assert torch.equal(predicted, w.predicted) and thirds.tolist() == w.thickness


def test_prompt_explorer_shows_a_bad_word_as_a_message(pipe):
    w = widgets.prompt_explorer(pipe, prompt="a seven", steps=2, n=2)
    good = w.samples.clone()
    w.prompt.value = "a fat seven"
    assert w.error is not None and "fat" in w.error
    text = "".join(o.get("text", "") for o in w.out.outputs)
    assert text.startswith("ValueError: unknown word(s) ['fat']")
    assert all(word in text for word in latent.WORDS)  # the vocabulary is listed
    assert "Traceback" not in text and "ValueError" in w.readout.value
    assert torch.equal(w.samples, good)  # the last good samples stay as they were
    w.prompt.value = "a thin 1"  # a good prompt again: the error is gone
    assert w.error is None and w.tokens == ["<s>", "a", "thin", "1"]


def test_prompt_explorer_defaults(pipe):
    w = widgets.prompt_explorer(pipe, steps=2, n=1)
    assert w.w.value == latent.DEFAULT_W and w.w.step == 0.5 and w.w.max == 10.0
    assert w.prompt.value == "a thick seven slanted left" and w.prompt.continuous_update is False
    w.prompt.value = ""  # the null prompt: START alone takes all the attention
    assert w.tokens == ["<s>"] and torch.allclose(w.maps, torch.ones(1, 1, 32, 32))
