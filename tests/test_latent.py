"""Lesson 08's library: the caption grammar and tokeniser, attention two ways, the SpatialTransformer block,
the attributes measured from pixels, LatentDiffusion and text_to_image. Tiny random models, fast."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import latent, nets
from course_lib.schedules import make_schedule

TINY = dict(ae_width=8, context_dim=16, text_layers=1, unet_channels=(16, 32), unet_blocks=1, heads=2)


def _perturbed(module, seed=0, scale=0.2):
    """Random weights everywhere (at init the attention blocks and the U-Net's output are zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _perturbed(latent.LatentDiffusion(**TINY)).requires_grad_(False)


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("linear", 1000)


# ------------------------------------------------------------------------------------------ the grammar


def _forms(d):
    """Every form the issue asks for, for digit d as a word and as a numeral."""
    out = []
    for name in (latent.DIGIT_WORDS[d], str(d)):
        a = "an" if name in ("eight", "8") else "a"
        out += [name, f"{a} {name}", f"the digit {name}", f"a thick {name}", f"a thin {name}", f"an upright {name}",
                f"{a} {name} slanted left", f"{a} {name} slanted right", f"a thick {name} slanted left",
                f"a thin {name} slanted right", f"a thick upright {name}", f"a thin upright {name}"]
    return out


@pytest.mark.parametrize("d", range(10))
def test_tokenizer_accepts_every_form(d):
    prompts = _forms(d)
    tokens, mask = latent.tokenize(prompts)
    assert tokens.shape == mask.shape == (len(prompts), latent.MAX_LEN)
    assert (tokens[:, 0] == latent.TOKEN_ID[latent.START]).all()
    for prompt, row, m in zip(prompts, tokens, mask):
        words = prompt.split()
        assert m.sum() == len(words) + 1
        assert row[1:len(words) + 1].tolist() == [latent.TOKEN_ID[w] for w in words]
        assert (row[len(words) + 1:] == latent.TOKEN_ID[latent.PAD]).all()
    # case and punctuation aside: the same tokens
    shouted = [p.upper().replace(" slanted", ", slanted") + "!" for p in prompts]
    assert torch.equal(latent.tokenize(shouted)[0], tokens)


@pytest.mark.parametrize("d", range(10))
def test_captions_come_from_the_grammar(d):
    for thickness in (0, 1, 2):
        for slant_class in (None, 0, 1, 2):
            for numeral in (False, True):
                text = latent.caption(d, thickness, slant_class, numeral=numeral)
                latent.tokenize(text)  # every caption the model is trained on tokenises
                assert (latent.DIGIT_WORDS[d] if not numeral else str(d)) in text.split()
    assert latent.caption(7, 2, 0) == "a thick seven slanted left"
    assert latent.caption(8, 1, 1) == "an upright eight"
    assert latent.caption(8, 0, 2, numeral=True) == "a thin 8 slanted right"
    assert latent.caption(3, 1, None, the_digit=True) == "the digit three"


def test_random_captions_reproducible_and_tokenisable():
    labels = torch.arange(40) % 10
    th, sl = torch.arange(40) % 3, (torch.arange(40) // 3) % 3
    a = latent.random_captions(labels, th, sl, generator=torch.Generator().manual_seed(1))
    b = latent.random_captions(labels, th, sl, generator=torch.Generator().manual_seed(1))
    assert a == b and len(set(a)) > 10
    latent.tokenize(a)
    assert all(latent.DIGIT_WORDS[y] in c.split() or str(y) in c.split() for y, c in zip(labels.tolist(), a))


def test_null_prompt_is_start_alone():
    tokens, mask = latent.tokenize("")
    assert tokens[0, 0] == latent.TOKEN_ID[latent.START] and mask[0].tolist() == [True] + [False] * (latent.MAX_LEN - 1)
    assert latent.token_strings("A thick 7!") == [latent.START, "a", "thick", "7"]


@pytest.mark.parametrize("bad", ["a fat seven", "seven point five", "<pad>", "a thick <s>", "eleven"])
def test_unknown_word_lists_the_vocabulary(bad):
    with pytest.raises(ValueError) as info:
        latent.tokenize(["a seven", bad])
    message = str(info.value)
    assert "unknown word" in message
    assert all(w in message for w in latent.WORDS)


def test_too_long_and_not_a_string():
    with pytest.raises(ValueError, match="at most"):
        latent.tokenize("a thick seven seven seven seven seven seven")
    with pytest.raises(ValueError, match="string"):
        latent.tokenize([7])


# ------------------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_equals_sdpa(heads, masked):
    g = torch.Generator().manual_seed(heads)
    B, N, L, d = 3, 64, 8, 16
    q, k, v = (torch.randn((B, heads, n, d), generator=g) for n in (N, L, L))
    mask = None
    if masked:
        lengths = torch.tensor([1, 4, 8])
        mask = (torch.arange(L) < lengths[:, None])[:, None, :]  # (B, 1, L): the same for every head
    fast = nets.attention(q, k, v, mask)
    slow, w = nets.attention(q, k, v, mask, return_weights=True)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast, F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[..., None, :]),
                          atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(B, heads, N), atol=1e-6)
    if masked:
        assert (w[0, :, :, 1:] == 0).all() and (w[1, :, :, 4:] == 0).all()


@pytest.mark.parametrize("heads", [1, 4])
def test_cross_attention_two_paths_agree(heads):
    torch.manual_seed(1)
    attn = nets.CrossAttention(32, 16, heads).eval()
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 8, 16)
    mask = torch.arange(8) < torch.tensor([[3], [8]])
    fast = attn(x, ctx, mask)
    slow, w = attn(x, ctx, mask, return_weights=True)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert w.shape == (2, heads, 10, 8) and (w[0, ..., 3:] == 0).all()
    with pytest.raises(ValueError, match="divisible"):
        nets.CrossAttention(30, 16, 4)


def test_spatial_transformer_is_identity_at_init_and_not_after():
    torch.manual_seed(2)
    block = nets.SpatialTransformer(32, 16, heads=4).eval()
    x, ctx = torch.randn(2, 32, 8, 8), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        assert torch.equal(block(x, ctx, mask), x)
        torch.nn.init.normal_(block.proj_out.weight, std=0.1)
        out = block(x, ctx, mask)
        maps = []
        out_slow = block(x, ctx, mask, attention_maps=maps)
    assert not torch.allclose(out, x, atol=1e-3)
    assert torch.allclose(out, out_slow, atol=1e-5)  # the explicit path gives the same output
    assert maps[0].shape == (2, 4, 64, 5)


def test_padding_gets_zero_weight_and_pad_ids_do_not_matter(tiny):
    prompts = ["a thick seven", "an 8 slanted left", ""]
    tokens, mask = latent.tokenize(prompts)
    other = tokens.clone()
    other[~mask] = torch.randint(2, len(latent.VOCAB), (int((~mask).sum()),), generator=torch.Generator().manual_seed(3))
    z = torch.randn((3, *tiny.latent_shape), generator=torch.Generator().manual_seed(4))
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        ctx_a, ctx_b = tiny.text_encoder(tokens, mask), tiny.text_encoder(other, mask)
        assert torch.allclose(ctx_a[mask], ctx_b[mask], atol=1e-5)  # real tokens never see the padding
        maps = []
        eps_a = tiny(z, t, ctx_a, mask, maps)
        eps_b = tiny(z, t, ctx_b, mask)
        eps_fast = tiny(z, t, ctx_a, mask)
    assert torch.allclose(eps_a, eps_b, atol=1e-5)
    assert torch.allclose(eps_a, eps_fast, atol=1e-5)  # explicit attention path = sdpa path, whole U-Net
    for w in maps:  # (B, heads, h*w, L)
        assert (w.masked_select(~mask[:, None, None, :].expand_as(w)) == 0).all()


# ------------------------------------------------------------------------------------------ attributes


def _bar(shear, thickness=1):
    """A 32x32 image in [-1, 1]: a vertical bar from row 6 to row 25 whose column moves by ``shear`` per row upwards."""
    img = -torch.ones(1, 1, 32, 32)
    for r in range(6, 26):
        c = round(16 + shear * (15.5 - r))  # rows grow downwards: the top (small r) moves right for shear > 0
        img[0, 0, r, c - thickness + 1:c + thickness] = 1.0
    return img


def test_slant_sign_of_sheared_bars():
    right, upright, left = _bar(0.4), _bar(0.0), _bar(-0.4)
    assert latent.slant(right).item() > 0.3
    assert abs(latent.slant(upright).item()) < 1e-6
    assert latent.slant(left).item() < -0.3
    assert latent.ink(_bar(0.0, 2)).item() > latent.ink(upright).item()
    assert latent.ink(upright).item() == pytest.approx(20.0)


def test_attribute_tertiles_within_class():
    shears = torch.linspace(-0.5, 0.5, 30)
    widths = [1, 2, 3] * 10
    images = torch.cat([_bar(s.item(), w) for s, w in zip(shears, widths)] * 2)  # (60, 1, 32, 32)
    labels = torch.tensor([0] * 30 + [1] * 30)
    images[30:] = images[30:].flip(0)  # class 1: the same digits in reverse order
    thickness, slant_class = latent.attributes(images, labels)
    for c in (0, 1):
        idx = labels == c
        assert torch.bincount(slant_class[idx], minlength=3).tolist() == [10, 10, 10]
        s = latent.slant(images[idx])
        assert s[slant_class[idx] == 0].max() < s[slant_class[idx] == 1].min()
        assert s[slant_class[idx] == 1].max() < s[slant_class[idx] == 2].min()
        ink = latent.ink(images[idx])
        assert ink[thickness[idx] == 2].min() > ink[thickness[idx] == 0].max()
    # the left-leaning bars are "slanted left" (0), the right-leaning ones "slanted right" (2)
    assert slant_class[0] == 0 and slant_class[29] == 2 and slant_class[30] == 2 and slant_class[59] == 0


# ------------------------------------------------------------------------------------------ the model


def test_encode_decode_shapes_and_scale_factor(tiny):
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z_raw = tiny.autoencoder.encode(x)
        scale = latent.latent_scale_factor(tiny.autoencoder, x, batch=2)
        assert scale == pytest.approx(1 / z_raw.std().item(), rel=1e-5)
        model = latent.LatentDiffusion(**TINY)
        model.load_state_dict(tiny.state_dict())
        model.scale_factor.fill_(scale)
        z = model.encode_images(x)
        assert z.shape == (5, 4, 8, 8)
        assert torch.allclose(z, z_raw * scale)
        assert z.std().item() == pytest.approx(1.0, rel=1e-4)
        assert torch.allclose(model.decode_latents(z), tiny.autoencoder.decode(z_raw), atol=1e-5)
        assert model.decode_latents(z).shape == (5, 1, 32, 32)
    with pytest.raises(ValueError, match="32, 32"):
        tiny.autoencoder.encode(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="8, 8"):
        tiny.autoencoder.decode(torch.zeros(1, 4, 4, 4))


def test_text_to_image_shapes_maps_determinism(tiny, schedule):
    prompts = ["a thick seven slanted left", "an 8", ""]
    g = torch.Generator().manual_seed(5)
    x, maps = latent.text_to_image(tiny, prompts, steps=3, w=3.0, generator=g, schedule=schedule, return_attention=True)
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert maps.shape == (3, latent.MAX_LEN, 32, 32)
    assert torch.allclose(maps.sum(1), torch.ones(3, 32, 32), atol=1e-5)  # each pixel's attention sums to 1 over tokens
    lengths = latent.tokenize(prompts)[1].sum(1)
    for i, n in enumerate(lengths.tolist()):
        assert (maps[i, n:] == 0).all()  # padding gets nothing
    assert torch.allclose(maps[2, 0], torch.ones(32, 32))  # the null prompt: all attention on START
    again = latent.text_to_image(tiny, prompts, steps=3, w=3.0, generator=torch.Generator().manual_seed(5),
                                 schedule=schedule, return_attention=True)
    assert torch.equal(again[0], x) and torch.equal(again[1], maps)  # the same generator, the same images
    fast = latent.text_to_image(tiny, prompts, steps=3, w=3.0, generator=torch.Generator().manual_seed(5),
                                schedule=schedule)
    assert torch.allclose(fast, x, atol=1e-4)  # drawing the maps (the explicit softmax path) changes nothing but rounding
    other = latent.text_to_image(tiny, prompts, steps=3, w=3.0, generator=torch.Generator().manual_seed(6),
                                 schedule=schedule)
    assert not torch.allclose(other, x)
    single = latent.text_to_image(tiny, "a thin 1", steps=2, schedule=schedule)
    assert single.shape == (1, 1, 32, 32)


def test_text_to_image_guidance_and_bad_input(tiny, schedule):
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = latent.text_to_image(tiny, ["a seven"], steps=2, w=1.0, generator=g(), schedule=schedule)
    b = latent.text_to_image(tiny, ["a seven"], steps=2, w=5.0, generator=g(), schedule=schedule)
    assert not torch.allclose(a, b)  # guidance acts: the prompt and the null prompt differ in this model
    for bad in (float("nan"), float("inf"), "three"):
        with pytest.raises(ValueError, match="finite"):
            latent.text_to_image(tiny, ["a seven"], steps=2, w=bad, schedule=schedule)
    with pytest.raises(ValueError, match="schedule"):
        latent.text_to_image(tiny, ["a seven"], steps=2)
    with pytest.raises(ValueError, match="unknown word"):
        latent.text_to_image(tiny, ["a purple seven"], steps=2, schedule=schedule)


def test_latent_loss_trains_text_encoder_and_unet(tiny, schedule):
    model = latent.LatentDiffusion(**TINY)
    model.load_state_dict(tiny.state_dict())
    model.autoencoder.requires_grad_(False)
    z0 = torch.randn(6, 4, 8, 8)
    labels = torch.arange(6)
    batch = (z0, labels, labels % 3, (labels + 1) % 3)
    loss = latent.latent_diffusion_loss(schedule)(model, batch, torch.Generator().manual_seed(8))
    loss.backward()
    assert math.isfinite(loss.item())
    assert model.text_encoder.token_emb.weight.grad is not None and model.unet.conv_in.weight.grad is not None
    assert all(p.grad is None for p in model.autoencoder.parameters())


# ------------------------------------------------------------------------------------------ lesson 08's measurements


def test_digit_prompts_cover_every_digit_and_form():
    from course_lib import metrics

    prompts, labels, forms = metrics.digit_prompts(8)
    assert len(prompts) == 80 and torch.bincount(labels).tolist() == [8] * 10
    assert set(forms) == set(metrics.PROMPT_FORMS)
    assert prompts[:3] == ["a zero", "a one", "a two"] and prompts[10:13] == ["a 0", "a 1", "a 2"]
    assert prompts[27] == "the digit seven" and prompts[37] == "7" and prompts[18] == "an 8"
    latent.tokenize(prompts)


def test_cohen_d():
    from course_lib import metrics

    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0])
    assert metrics.cohen_d(a, b) == pytest.approx(1.0)
    assert metrics.cohen_d(b, a) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        metrics.cohen_d(a[:1], b)


def test_adherence_and_cost_run_on_a_tiny_model(tiny, schedule):
    import types

    from course_lib import metrics

    pipe = types.SimpleNamespace(model=tiny, schedule=schedule, info={"sha256": "x"})
    rows = metrics.prompt_adherence(pipe, scales=(1.0,), n_per_digit=1, steps=2)
    assert rows[0]["n"] == 10 and len(rows[0]["per_digit"]) == 10 and 0 <= rows[0]["accuracy"] <= 1
    attrs = metrics.attribute_adherence(pipe, s=2.0, n_per_digit=2, steps=2)
    for name in ("thickness", "slant"):
        assert 0 <= attrs[name]["share_ordered"] <= 1 and len(attrs[name]["per_digit_effect"]) == 10
        assert attrs[name]["real_effect_size"] > 1  # real digits' top and bottom thirds are far apart
    thresholds = metrics.attribute_thresholds()
    assert thresholds["ink"].shape == (10, 2) and (thresholds["ink"][:, 0] < thresholds["ink"][:, 1]).all()
    pixel = types.SimpleNamespace(model=nets.UNet(channels=(8, 16), blocks=1, num_classes=10).eval(), schedule=schedule,
                                  null_class=10, image_shape=(1, 32, 32))
    cost = metrics.latent_cost(pipe, pixel, batch=2, repeats=1, steps=2)
    for key in ("latent", "pixel"):
        assert cost[key]["forward_mflops"] > 0 and cost[key]["train_step_mflops"] > cost[key]["forward_mflops"]
        assert cost[key]["sample_seconds"] > 0
