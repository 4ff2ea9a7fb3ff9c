"""Checks for lesson 08 (latent diffusion and cross-attention): scaled dot-product attention by hand, the latent
scale factor, tokenising a prompt, classifier-free guidance against the null prompt, and the widget question
"a prompt and a guidance scale that make the model draw what is asked".

Each check runs the learner's function on small inputs and compares its *behaviour* with the library (torch's
``F.scaled_dot_product_attention``, :mod:`course_lib.latent`). When the result is wrong, it compares it with the
usual mistakes (no 1/sqrt(d), softmax over the queries, the mask ignored, std instead of 1/std, the scale per
channel, START or padding missing, cond and null swapped, s on the wrong term, ...) and names the one it matches.
"""

import math
import re

import torch
import torch.nn.functional as F

from .. import latent
from . import diagnose, expect_tensor, fail, passed


# ----------------------------------------------------------------------------------------------
# Exercise 8.1: scaled dot-product attention by hand (Vaswani et al., 2017, eq. 1)
# ----------------------------------------------------------------------------------------------

#: the usual mistakes of exercise 8.1, each with the hint that names it
ATTENTION_MISTAKES = {
    "no scale": "missing 1/sqrt(d): divide the scores Q K^T by sqrt(d), the size of each query vector (eq. 1), or the "
                "softmax saturates as d grows",
    "scale 1/d": "divided by d instead of sqrt(d): the scale is 1 / sqrt(d) (eq. 1); q . k of unit vectors has variance d, "
                 "so sqrt(d) brings it back to 1",
    "softmax over queries": "softmax over the wrong axis: each QUERY's weights must sum to 1 over the keys, softmax(dim=-1) "
                            "on the (..., N, L) scores, not over the queries (dim=-2)",
    "mask ignored": "mask ignored: padding keys got weight; set their scores to -inf before the softmax, "
                    "scores.masked_fill(~key_mask[..., None, :], float('-inf'))",
    "mask inverted": "mask inverted: key_mask is True for a REAL token; mask out where it is False (~key_mask)",
    "mask multiplied": "masked by multiplying the scores by the mask: a score of 0 still gets weight e^0 after the softmax; "
                       "set the padding scores to -inf instead",
    "mask after softmax": "mask applied after the softmax: zeroing weights afterwards leaves rows that no longer sum to 1; "
                          "mask the scores with -inf BEFORE the softmax",
}


def _attention_variants(q, k, v, mask):
    """The right weights, and the usual mistakes as (weights, output, hint)."""
    d = q.shape[-1]
    m = mask[..., None, :]  # (..., 1, L): the same for every query

    def masked(scores):
        return scores.masked_fill(~m, float("-inf"))

    raw = q @ k.transpose(-2, -1)  # (..., N, L)
    good = masked(raw / math.sqrt(d)).softmax(-1)
    wrong = {
        "no scale": masked(raw).softmax(-1),
        "scale 1/d": masked(raw / d).softmax(-1),
        "softmax over queries": masked(raw / math.sqrt(d)).softmax(-2).nan_to_num(0.0),
        "mask ignored": (raw / math.sqrt(d)).softmax(-1),
        "mask inverted": (raw / math.sqrt(d)).masked_fill(m, float("-inf")).softmax(-1).nan_to_num(0.0),
        "mask multiplied": (raw / math.sqrt(d) * m).softmax(-1),
        "mask after softmax": (raw / math.sqrt(d)).softmax(-1) * m,
    }
    return good, [(w, w @ v, ATTENTION_MISTAKES[name]) for name, w in wrong.items()]


def _call_attention(fn, q, k, v, mask, ex):
    out = fn(q, k, v, mask)
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(ex, f"your function returned {type(out).__name__}, expected a pair (output, weights)",
             "return both: weights = softmax(...), then (weights @ v, weights)")
    return out


def check_attention(attention_fn):
    """``attention_fn(q, k, v, key_mask=None)`` -> (output (..., N, d_v), weights (..., N, L)) with
    weights = softmax(q k^T / sqrt(d)) over the keys, padding keys (key_mask False) at weight 0."""
    ex = "8.1"
    hint = ("scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]); if key_mask is not None: scores = "
            "scores.masked_fill(~key_mask[..., None, :], float('-inf')); weights = scores.softmax(dim=-1); "
            "return weights @ v, weights")
    g = torch.Generator().manual_seed(81)
    cases = [  # (q shape, key length L, mask shape or None): no mask first, then one head, then several heads
        ((2, 5, 16), 7, None),
        ((3, 6, 16), 5, (3, 5)),
        ((2, 4, 10, 8), 7, (2, 1, 7)),  # the mask broadcast over the heads
    ]
    for q_shape, L, mask_shape in cases:
        *lead, N, d = q_shape
        q = torch.randn(q_shape, generator=g, dtype=torch.float64) * 2
        k = torch.randn((*lead, L, d), generator=g, dtype=torch.float64) * 2
        v = torch.randn((*lead, L, d + 3), generator=g, dtype=torch.float64)
        if mask_shape is None:
            mask, full = None, torch.ones(L, dtype=torch.bool)
        else:
            lengths = torch.randint(2, L, mask_shape[:-1], generator=g)  # real tokens first, then >= 1 padding
            mask = full = torch.arange(L) < lengths[..., None]  # (..., L) bool
        where = f"q of shape {q_shape}" + (", with a key mask" if mask is not None else ", no mask")
        out, weights = _call_attention(attention_fn, q, k, v, mask, ex)
        if isinstance(weights, torch.Tensor) and weights.shape == (*lead, N, L) and torch.isnan(weights).any():
            fail(ex, f"your weights ({where}) contain NaN",
                 "softmax over the wrong axis: a padding key's column is all -inf, and a softmax over the queries "
                 "(dim=-2) of it is 0/0; take the softmax over the keys, dim=-1" if mask is not None else
                 "look for a division by zero")
        expect_tensor(ex, weights, (*lead, N, L), f"the weights ({where})")
        expect_tensor(ex, out, (*lead, N, d + 3), f"the output ({where})")
        good, mistakes = _attention_variants(q, k, v, full)
        diagnose(ex, weights, good, [(w, h) for w, _, h in mistakes], f"the weights ({where})", hint)
        torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[..., None, :])
        diagnose(ex, out, torch_out, [(o, h) for _, o, h in mistakes],
                 f"the output ({where}; against torch's F.scaled_dot_product_attention)",
                 "the output is weights @ v, (..., N, L) @ (..., L, d_v)")
    passed(ex, "softmax(Q K^T / sqrt(d)) V with padding masked out equals torch's F.scaled_dot_product_attention, "
               "one head and several.")


# ----------------------------------------------------------------------------------------------
# Exercise 8.2: the latent scale factor (Rombach et al., 2022, Sec. 4.3.2, scale_by_std)
# ----------------------------------------------------------------------------------------------

class _FakeAutoencoder(torch.nn.Module):
    """An 'autoencoder' whose encode() gives (B, 4, 8, 8) latents with a different mean and std per channel and a
    per-image offset: the pooled std, per-channel stds, RMS and per-image stds all differ."""

    def __init__(self, seed=82):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 1.0, 3.0, 6.0]).view(1, 4, 1, 1))
        self.register_buffer("proj", torch.randn(32 * 32, 4 * 8 * 8, generator=g, dtype=torch.float64) / 32)
        self.calls = 0

    def encode(self, x):
        self.calls += 1
        B = x.shape[0]
        h = (x.double().flatten(1) @ self.proj).view(B, 4, 8, 8)  # a fixed linear map of the image
        h = (h - h.mean(dim=(2, 3), keepdim=True)) / h.std(dim=(2, 3), keepdim=True)  # unit per image and channel
        offset = x.double().mean(dim=(1, 2, 3)).view(B, 1, 1, 1) * 2  # images differ in their offset
        return (self.mean + offset + self.std * h).float()

    def decode(self, z):
        raise RuntimeError("the scale factor needs only encode()")


def check_scale_factor(scale_factor_fn):
    """``scale_factor_fn(autoencoder, images)`` -> 1 / std of all the latents ``autoencoder.encode(images)``, pooled
    over images, channels and positions (a float or a 0-dim tensor)."""
    ex = "8.2"
    ae = _FakeAutoencoder()
    g = torch.Generator().manual_seed(820)
    images = torch.rand((64, 1, 32, 32), generator=g) * 2 - 1
    value = scale_factor_fn(ae, images)
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        fail(ex, f"your scale factor is a tensor of shape {tuple(value.shape)}, expected one number",
             "computed per channel (or per image): the scale factor is ONE number, 1 / std of all latent entries "
             "pooled, z.flatten().std(); a per-channel scale would change the latents' shape, not just their size")
    try:
        value = float(value)
    except (TypeError, ValueError):
        fail(ex, f"your scale factor should be a number, got {type(value).__name__}", "return 1.0 / z.std().item()")
    if ae.calls == 0:
        fail(ex, "your function never called autoencoder.encode", "encode the images first: z = autoencoder.encode(images)")
    with torch.no_grad():
        z = ae.encode(images).double()  # (64, 4, 8, 8)
    good = 1 / z.std().item()
    mistakes = {
        "std instead of 1/std": z.std().item(),
        "1/variance instead of 1/std": 1 / z.var().item(),
        "root mean square instead of std": 1 / z.square().mean().sqrt().item(),
        "per channel then averaged": (1 / z.transpose(0, 1).flatten(1).std(1)).mean().item(),
        "per channel std averaged": 1 / z.transpose(0, 1).flatten(1).std(1).mean().item(),
        "per image then averaged": 1 / z.flatten(1).std(1).mean().item(),
        "mean absolute value": 1 / z.abs().mean().item(),
        "the largest value": 1 / z.abs().max().item(),
    }
    hints = {
        "std instead of 1/std": "the factor MULTIPLIES the latents so that they get unit std, "
                                "z * scale_factor; it is 1 / std",
        "1/variance instead of 1/std": "z / std has unit variance; z / var does not",
        "root mean square instead of std": ".std() subtracts the mean first; the latents "
                                           "are not centred, so sqrt(mean(z^2)) is larger than their std",
        "per channel then averaged": "pool every entry of every channel into ONE std",
        "per channel std averaged": "the mean of the channels' stds is not the pooled std "
                                    "(the channels have different means); use z.flatten().std()",
        "per image then averaged": "the images' own stds miss the differences BETWEEN images; "
                                   "pool all latents of all images",
        "mean absolute value": "1/mean(|z|) is not 1/std: use z.std()",
        "the largest value": "1/max|z| normalises the range, not the spread: use z.std()",
    }
    if not math.isfinite(value) or abs(value - good) > 1e-3 * good:
        for name, wrong in mistakes.items():
            if math.isfinite(value) and abs(value - wrong) <= 1e-3 * abs(wrong):
                fail(ex, f"your scale factor {value:.5g} matches a common mistake ({name}); expected {good:.5g}", hints[name])
        fail(ex, f"your scale factor is {value:.5g}, expected {good:.5g} (1 / the std of all latent entries)",
             "z = autoencoder.encode(images); return 1.0 / z.flatten().std().item()")
    scaled = z * value
    passed(ex, f"on the check's test latents 1 / std = {value:.4f}; scaled by it they have std {scaled.std().item():.3f} "
               "(the schedule assumes unit-variance data).")


# ----------------------------------------------------------------------------------------------
# Exercise 8.3: tokenising a prompt
# ----------------------------------------------------------------------------------------------

_TOKENISE_CASES = ["a thick seven slanted left", "A Thick SEVEN, slanted left.", "7", "the digit 3", "an upright eight",
                   "a thin 1 slanted right", "", "  an 8  slanted   right!"]


def check_tokenize(tokenize_fn):
    """``tokenize_fn(prompt)`` -> (tokens (MAX_LEN,) long, key_mask (MAX_LEN,) bool) for ONE prompt, as
    :func:`course_lib.latent.tokenize` does for a batch: START, then the ids of the lower-cased words (punctuation
    dropped), then PAD; key_mask True at the real tokens; an unknown word or a prompt too long -> ValueError, the
    unknown word's message listing the vocabulary."""
    ex = "8.3"
    L, START_ID, PAD_ID = latent.MAX_LEN, latent.TOKEN_ID[latent.START], latent.TOKEN_ID[latent.PAD]
    hint = ("ids = [TOKEN_ID[START]] + [TOKEN_ID[w] for w in words]; pad with TOKEN_ID[PAD] to MAX_LEN; "
            "key_mask = tokens != TOKEN_ID[PAD]")
    for prompt in _TOKENISE_CASES:
        ref_tokens, ref_mask = (x[0] for x in latent.tokenize(prompt))
        try:
            out = tokenize_fn(prompt)
        except ValueError as err:
            plain = re.sub(r"[^\w\s]", " ", prompt)
            if _accepts(tokenize_fn, plain.lower()):
                if plain != prompt and _accepts(tokenize_fn, plain):
                    fail(ex, f"{prompt!r} raised ValueError: {err}",
                         "punctuation not stripped: 'seven,' is not a word of the vocabulary; drop punctuation, e.g. "
                         "re.sub(r'[^\\w\\s]', ' ', prompt), before splitting")
                if plain.lower() != plain and _accepts(tokenize_fn, prompt.lower()):
                    fail(ex, f"{prompt!r} raised ValueError: {err}",
                         "case not lowered: 'Thick' and 'thick' are the same word; lower-case the prompt first (prompt.lower())")
                fail(ex, f"{prompt!r} raised ValueError: {err}",
                     "case not lowered and punctuation not stripped: lower-case the prompt and drop punctuation "
                     "(re.sub(r'[^\\w\\s]', ' ', prompt.lower())) before splitting it into words")
            fail(ex, f"{prompt!r} raised ValueError: {err}", "every word of this prompt is in latent.VOCAB")
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(ex, f"tokenize({prompt!r}) returned {type(out).__name__}, expected a pair (tokens, key_mask)", hint)
        tokens, mask = out
        if not isinstance(tokens, torch.Tensor) or not isinstance(mask, torch.Tensor):
            fail(ex, f"tokenize({prompt!r}) should return two tensors", "torch.tensor(ids) and tokens != TOKEN_ID[PAD]")
        words = latent.words(prompt)
        if tokens.ndim != 1 or len(tokens) != L:
            if tokens.ndim == 1 and len(tokens) == len(words) + 1:
                fail(ex, f"tokenize({prompt!r}) has {len(tokens)} tokens, expected {L}",
                     f"padding not applied: every prompt becomes MAX_LEN = {L} ids, the rest filled with "
                     f"TOKEN_ID[PAD] = {PAD_ID}, so that prompts of any length stack into one batch")
            if tokens.ndim == 1 and len(tokens) == len(words):
                fail(ex, f"tokenize({prompt!r}) has {len(tokens)} tokens, expected {L}",
                     f"START missing and no padding: begin with TOKEN_ID[START] = {START_ID}, pad to MAX_LEN = {L}")
            fail(ex, f"tokenize({prompt!r}) has shape {tuple(tokens.shape)}, expected ({L},)", hint)
        if tokens.is_floating_point():
            fail(ex, f"your tokens have dtype {tokens.dtype}", "token ids are integers (torch.long): nn.Embedding needs them")
        if not torch.equal(tokens.long(), ref_tokens):
            shifted = torch.tensor(([_token_id(w) for w in words] + [PAD_ID] * L)[:L])
            if torch.equal(tokens.long(), shifted):
                fail(ex, f"tokenize({prompt!r}) = {tokens.tolist()}, expected {ref_tokens.tolist()}",
                     f"START missing: every prompt begins with TOKEN_ID[START] = {START_ID} (the null prompt is START "
                     "alone, and START gives each pixel a token to attend to when the words have nothing to say)")
            real = ref_mask.sum().item()
            if torch.equal(tokens[:real].long(), ref_tokens[:real]):
                fail(ex, f"tokenize({prompt!r}) = {tokens.tolist()}, expected {ref_tokens.tolist()}",
                     f"padding with the wrong id: fill the rest with TOKEN_ID[PAD] = {PAD_ID}")
            fail(ex, f"tokenize({prompt!r}) = {tokens.tolist()}, expected {ref_tokens.tolist()}", hint)
        if mask.dtype != torch.bool or mask.shape != (L,):
            fail(ex, f"your key_mask for {prompt!r} has dtype {mask.dtype} and shape {tuple(mask.shape)}",
                 f"key_mask is a bool tensor of shape ({L},): tokens != TOKEN_ID[PAD]")
        if not torch.equal(mask, ref_mask):
            if torch.equal(mask, ~ref_mask):
                fail(ex, f"your key_mask for {prompt!r} is {mask.tolist()}",
                     "mask inverted: True marks a REAL token (START and the words), False the padding")
            fail(ex, f"your key_mask for {prompt!r} is {mask.tolist()}, expected {ref_mask.tolist()}",
                 "key_mask = tokens != TOKEN_ID[PAD]: True for START and the words, False for the padding")
    # unknown words and prompts that are too long
    for bad in ("a fat seven", "a seven slanted leftwards"):
        try:
            tokenize_fn(bad)
        except ValueError as err:
            missing = [w for w in latent.WORDS if w not in str(err)]
            if missing:
                fail(ex, f"the ValueError for {bad!r} does not list the vocabulary (missing e.g. {missing[:3]})",
                     "say which words ARE known: include ' '.join(latent.WORDS) in the message")
            continue
        except Exception as err:  # noqa: BLE001 - report what came instead
            fail(ex, f"tokenize({bad!r}) raised {type(err).__name__}: {err}",
                 "raise ValueError for a word outside the vocabulary, listing the vocabulary")
        fail(ex, f"tokenize({bad!r}) returned a result", "unknown word accepted: a word outside the vocabulary must raise "
             "ValueError (dropping it or mapping it to PAD silently changes what the prompt says)")
    too_long = "a thick seven seven seven seven seven seven"
    try:
        tokenize_fn(too_long)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001
        fail(ex, f"tokenize({too_long!r}) raised {type(err).__name__}", f"a prompt of more than {L - 1} words: raise ValueError")
    else:
        fail(ex, f"tokenize({too_long!r}) ({len(latent.words(too_long))} words) returned a result",
             f"prompt too long accepted: at most MAX_LEN - 1 = {L - 1} words fit after START; raise ValueError "
             "rather than cut words off silently")
    passed(ex, "START, the lower-cased words, PAD up to MAX_LEN, the key mask, and ValueErrors that list the vocabulary.")


def _token_id(word):
    """A lookup that tolerates unknown words (for naming mistakes only)."""
    return latent.TOKEN_ID.get(word, -1)


def _accepts(tokenize_fn, prompt):
    """True when ``tokenize_fn(prompt)`` returns without a ValueError."""
    try:
        tokenize_fn(prompt)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Exercise 8.4: classifier-free guidance against the null prompt
# ----------------------------------------------------------------------------------------------

def _tiny_latent_model(seed=84):
    """A small LatentDiffusion with random weights everywhere (at init its attention blocks and output are zero, so
    the prompt would change nothing): the prompt, the null prompt and the mask all matter."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = latent.LatentDiffusion(ae_width=8, context_dim=16, text_layers=1, unet_channels=(16, 32), unet_blocks=1,
                                       heads=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval().requires_grad_(False)


class _Recording:
    """The model as the learner sees it (``encode_text``, calling it, ``latent_shape``), recording every call."""

    def __init__(self, model):
        self.model, self.calls, self.text_calls = model, [], []
        self.latent_shape, self.scale_factor = model.latent_shape, model.scale_factor

    def encode_text(self, prompts):
        self.text_calls.append(list(prompts) if not isinstance(prompts, str) else [prompts])
        return self.model.encode_text(prompts)

    def __call__(self, z_t, t, context, key_mask=None, attention_maps=None):
        self.calls.append(z_t.shape[0])
        return self.model(z_t, t, context, key_mask, attention_maps)


#: the usual mistakes of exercise 8.4, each with the hint that names it
CFG_MISTAKES = {
    "swapped": "cond and null swapped: guidance starts from the NULL prompt's eps and moves s times along "
               "(eps_prompt - eps_null); check which half of the batch holds the prompts",
    "ho_w": "s applied to the wrong term (Ho & Salimans' w): (1 + s) eps_c - s eps_u is their convention with w = s; "
            "the course's s multiplies (eps_c - eps_u) and adds eps_u",
    "no brackets": "s applied to the wrong term: eps_u + s * eps_c - eps_u is s * eps_c; bracket the difference, "
                   "eps_u + s * (eps_c - eps_u)",
    "s on eps_u": "s applied to the wrong term: s multiplies the DIFFERENCE (eps_c - eps_u), not eps_u",
    "off by one": "off by one: the course's s multiplies (eps_c - eps_u) directly (s = 1 is the plain conditional model)",
    "no null prompt": "null prompt not used: the unconditional half needs the empty prompt \"\" (START alone), not the "
                      "prompts again",
    "no mask": "key mask not passed: without it every pixel also attends to the padding tokens; pass the mask that "
               "model.encode_text returns as key_mask",
}


def _cfg_reference(model, z_t, t, prompts, s):
    B = len(prompts)
    with torch.no_grad():
        ctx, mask = model.encode_text(list(prompts) + [""] * B)
        eps_c, eps_u = model(torch.cat([z_t, z_t]), torch.cat([t, t]), ctx, mask).chunk(2)
        eps_same = model(z_t, t, ctx[:B], mask[:B])
        eps_nomask_c, eps_nomask_u = model(torch.cat([z_t, z_t]), torch.cat([t, t]), ctx, None).chunk(2)
    good = eps_u + s * (eps_c - eps_u)
    wrong = {"swapped": eps_c + s * (eps_u - eps_c), "ho_w": (1 + s) * eps_c - s * eps_u, "no brackets": s * eps_c,
             "s on eps_u": s * eps_u + (eps_c - eps_u), "off by one": eps_u + (s - 1) * (eps_c - eps_u),
             "no null prompt": eps_same, "no mask": eps_nomask_u + s * (eps_nomask_c - eps_nomask_u)}
    return good, [(w, CFG_MISTAKES[name]) for name, w in wrong.items()]


def check_guided_eps(guided_eps_fn):
    """``guided_eps_fn(model, z_t, t, prompts, s)`` -> eps_null + s (eps_prompt - eps_null) for a
    :class:`~course_lib.latent.LatentDiffusion` ``model``: the prompts and as many null prompts "" encoded in one
    ``model.encode_text`` call, and ONE call of ``model`` on the batch of 2B."""
    ex = "8.4"
    net = _tiny_latent_model()
    g = torch.Generator().manual_seed(840)
    prompts = ["a thick seven slanted left", "an 8", "the digit two", "a thin 1"]
    B = len(prompts)
    z_t = torch.randn((B, *net.latent_shape), generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    hint = ("context, mask = model.encode_text(prompts + [''] * B); eps_c, eps_u = model(torch.cat([z_t, z_t]), "
            "torch.cat([t, t]), context, mask).chunk(2); return eps_u + s * (eps_c - eps_u)")
    for s in (3.0, 7.5, 0.0, 1.0):
        rec = _Recording(net)
        with torch.no_grad():
            out = guided_eps_fn(rec, z_t, t, prompts, s)
        expect_tensor(ex, out, z_t.shape, f"the guided eps at s = {s}")
        good, mistakes = _cfg_reference(net, z_t, t, prompts, s)
        diagnose(ex, out, good, mistakes, f"the guided eps at s = {s}", hint)
        if s not in (0.0, 1.0) and rec.calls != [2 * B]:
            if rec.calls == [B, B]:
                fail(ex, f"at s = {s} you called the model twice, on {B} latents each",
                     "two separate passes: the values are right, but the exercise asks for ONE call on the batch of 2B "
                     "[z_t; z_t] with the contexts [prompts; null prompts] (as lesson 07)")
            fail(ex, f"at s = {s} the model was called with batch sizes {rec.calls}, expected one call with {2 * B}", hint)
    passed(ex, "eps_null + s (eps_prompt - eps_null) from one batch of 2B with the empty prompt as the null prompt, "
               "right at s = 0, 1, 3 and 7.5.")


# ----------------------------------------------------------------------------------------------
# Exercise 8.5 (widget): a prompt and a guidance scale that draw what is asked
# ----------------------------------------------------------------------------------------------

THICK_NAMES = ("thin", "middle", "thick")


def widget_reading(pipe, prompt, s, n=4, steps=25, seed=0):
    """What ``widgets.prompt_explorer(pipe, steps=steps, n=n, generator_seed=seed)`` shows for ``prompt`` at ``s``:
    (predicted labels (n,), thickness third (n,) of real digits of the predicted class: 0 thin, 1 middle, 2 thick)."""
    from ..metrics import attribute_thresholds, predict_labels

    # called exactly as the widget calls it: return_attention=True runs the explicit softmax instead of torch's fused
    # attention, which rounds differently, and a sample near a class or thickness boundary could read otherwise
    x, _ = latent.text_to_image(pipe, [prompt] * n, steps=steps, w=s, generator=torch.Generator().manual_seed(seed),
                                return_attention=True)
    predicted = predict_labels(x.cpu())
    bounds = attribute_thresholds()["ink"][predicted]  # (n, 2)
    ink = latent.ink(x.cpu()).double()
    return predicted, (ink > bounds[:, 0]).long() + (ink > bounds[:, 1]).long()


def check_prompt_goal(prompt, s, pipe, digit, thickness, need, n=4, steps=25, seed=0, s_step=0.5, s_max=10.0,
                      smallest=True):
    """Widget exercise: with the widget's noise (``n`` samples, DDIM-``steps``, seed ``seed``), ``prompt`` at guidance
    scale ``s`` must give samples that are ALL classified as ``digit``, and at least ``need`` of them in the
    ``thickness`` third (0 thin, 2 thick) of real digits of that class. With ``smallest``, ``s`` must also be the
    smallest such scale on the slider's grid (multiples of ``s_step``): the goal is not met one notch below."""
    ex = "8.5"
    want = THICK_NAMES[thickness]
    if not isinstance(prompt, str):
        fail(ex, f"prompt should be a string, got {type(prompt).__name__}", "copy the text you typed into the widget's box")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= s_max:
        fail(ex, f"s should be a guidance scale in [0, {s_max:g}], got {s!r}", "read the s slider of the widget")
    if abs(s / s_step - round(s / s_step)) > 1e-6:
        fail(ex, f"{s} is not on the slider's grid (multiples of {s_step})", "type the value the slider shows")
    try:
        latent.tokenize(prompt)
    except ValueError as err:
        fail(ex, f"the prompt {prompt!r} cannot be tokenised: {err}", "use only words of the vocabulary")

    def reading(scale):
        predicted, thirds = widget_reading(pipe, prompt, scale, n, steps, seed)
        right = int((predicted == digit).sum())
        in_third = int(((predicted == digit) & (thirds == thickness)).sum())
        reads = ", ".join(f"{c} ({THICK_NAMES[th]})" for c, th in zip(predicted.tolist(), thirds.tolist()))
        return right, in_third, reads

    right, in_third, reads = reading(s)
    words = latent.words(prompt)
    if right < n:
        named = str(digit) in words or latent.DIGIT_WORDS[digit] in words
        fail(ex, f"at s = {s:g} the samples of {prompt!r} read as {reads}: only {right} of {n} are a {digit}",
             "name the digit in the prompt (as a word or a numeral)" if not named else
             "the digit is named, but at this s the prompt is followed too weakly (s = 0 ignores it): move the s slider up")
    if in_third < need:
        if want not in words:
            fail(ex, f"at s = {s:g}: {reads}; {in_third} of {n} are {want}, at least {need} needed",
                 f"name the attribute: the captions the model learned from say '{want}' for the {want} third of each digit")
        fail(ex, f"at s = {s:g}: {reads}; {in_third} of {n} are {want}, at least {need} needed",
             "the attribute is named, but at this s it is followed too weakly: move the s slider up")
    if smallest and s >= s_step / 2:
        below_right, below_third, below_reads = reading(s - s_step)
        if below_right == n and below_third >= need:
            fail(ex, f"{prompt!r} works at s = {s:g}, but at s = {s - s_step:g} it works too ({below_reads})",
                 "you are asked for the SMALLEST s: move the slider down notch by notch until the readout fails")
    passed(ex, f"{prompt!r} at s = {s:g}: {reads}: every sample a {digit}, {in_third} of {n} in the {want} third "
               f"of real {latent.DIGIT_WORDS[digit]}s" + (f"; one notch lower, s = {s - s_step:g}, it fails."
                                                          if smallest and s >= s_step / 2 else "."))
