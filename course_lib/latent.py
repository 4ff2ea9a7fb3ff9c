"""Latent diffusion with text (lesson 08; Rombach et al., 2022): the caption grammar and its vocabulary,
the tokeniser, the attributes measured from each digit's pixels, the latent scale factor, the model
that holds the three parts, and :func:`text_to_image`.

Captions describe more than the class, so that the words of a prompt really need cross-attention:

* class: the digit, as a word ("seven") or a numeral ("7");
* stroke thickness: ink mass (sum of the pixels mapped to [0, 1]), by tertile *within the digit's class*
  (a one is always thinner than an eight): "thin" (lowest third), "thick" (highest), the middle unnamed;
* slant: the shear of the ink, -cov(x, y) / var(y) from its second moments (rows grow downwards, so a
  top leaning right has negative covariance), by tertile within class: "slanted left", "upright",
  "slanted right".

Forms the grammar produces (and the tokeniser accepts, case and punctuation aside), d = "seven" or "7":
``d``, ``a d``, ``the digit d``, ``a thick d``, ``an upright d``, ``a d slanted left``,
``a thin upright d``, ``a thick d slanted right``, ... The empty prompt "" is the null prompt of
classifier-free guidance.
"""

import re

import torch
from torch import nn

from .guidance import _finite
from .nets import Autoencoder, TextEncoder, UNet
from .samplers import ddim_sample

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAD, START = "<pad>", "<s>"
WORDS = ("a", "an", "the", "digit", *DIGIT_WORDS, *(str(d) for d in range(10)),
         "thick", "thin", "upright", "slanted", "left", "right")
VOCAB = (PAD, START, *WORDS)  # id 0 pads, id 1 starts every prompt (the null prompt is START alone)
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}
MAX_LEN = 8  # START + up to 7 words
THICKNESS = ("thin", None, "thick")  # tertiles of ink within class; the middle third is not named
SLANT = ("slanted left", "upright", "slanted right")  # tertiles of shear within class
DEFAULT_W = 2.0  # the default guidance scale s (eps_u + s (eps_c - eps_u)): from lesson 08's sweep (quality.json["latent"])


# --------------------------------------------------------------------------- attributes


def ink(images):
    """Ink mass of each image (B, 1, H, W) in [-1, 1]: the sum of its pixels mapped to [0, 1] -> (B,)."""
    return ((images + 1) / 2).sum(dim=(1, 2, 3))


def slant(images):
    """Shear of the ink: -cov(x, y) / var(y) from the second moments of the ink distribution -> (B,).
    Positive = the top leans right (column x grows rightwards, row y downwards); 0 = upright."""
    p = ((images + 1) / 2).clamp(min=0)[:, 0]  # (B, H, W) ink weights
    H, W = p.shape[-2:]
    y = torch.arange(H, dtype=p.dtype, device=p.device)[:, None]  # (H, 1)
    x = torch.arange(W, dtype=p.dtype, device=p.device)[None, :]  # (1, W)
    m = p.sum(dim=(1, 2)).clamp(min=1e-6)  # (B,)
    mx, my = (p * x).sum(dim=(1, 2)) / m, (p * y).sum(dim=(1, 2)) / m  # (B,) centre of ink
    dx, dy = x - mx[:, None, None], y - my[:, None, None]  # (B, H, W) offsets
    cov = (p * dx * dy).sum(dim=(1, 2)) / m
    var_y = (p * dy * dy).sum(dim=(1, 2)) / m
    return -cov / var_y.clamp(min=1e-6)


def tertile_bounds(values, labels, num_classes=10):
    """The boundaries of the thirds of ``values`` within each class of ``labels``: (num_classes, 2) float64,
    the 1/3 and 2/3 quantiles per class (NaN for a class with no values)."""
    q = torch.tensor([1 / 3, 2 / 3], dtype=torch.double)
    nan = torch.full((2,), float("nan"), dtype=torch.double)
    return torch.stack([torch.quantile(values[labels == c].double(), q) if (labels == c).any() else nan
                        for c in range(num_classes)])


def _tertile(values, labels, num_classes=10):
    """0, 1, 2 = lowest, middle, highest third of ``values`` within each class of ``labels``."""
    bounds = tertile_bounds(values, labels, num_classes).to(values.dtype)[labels]  # (B, 2): each value's class
    return (values > bounds[:, 0]).long() + (values > bounds[:, 1]).long()


def attributes(images, labels):
    """Thickness and slant classes of each training digit, by tertile within its class:
    (thickness (B,) in {0 thin, 1 unnamed, 2 thick}, slant (B,) in {0 left, 1 upright, 2 right})."""
    return _tertile(ink(images), labels), _tertile(slant(images), labels)


# --------------------------------------------------------------------------- captions


def caption(digit, thickness=1, slant_class=None, numeral=False, article=True, the_digit=False):
    """One caption from its parts: ``caption(7, 2, 0)`` -> "a thick seven slanted left".

    ``thickness`` 0/1/2 (1 = not named), ``slant_class`` 0/1/2 or None (not named), ``numeral``: "7"
    instead of "seven", ``article``: "a"/"an" in front, ``the_digit``: "the digit seven" (only without
    attributes)."""
    d = str(digit) if numeral else DIGIT_WORDS[digit]
    before = [w for w in (THICKNESS[thickness], "upright" if slant_class == 1 else None) if w]
    after = [SLANT[slant_class]] if slant_class in (0, 2) else []
    if the_digit and not before and not after:
        return f"the digit {d}"
    words = before + [d] + after
    if article:
        # "an" before a vowel sound: an upright, an eight, an 8, an 8 slanted left
        words = ["an" if words[0] in ("upright", "eight", "8") else "a"] + words
    return " ".join(words)


def random_captions(labels, thickness, slant_class, generator=None, p_attribute=0.7, p_numeral=0.5):
    """A caption per digit, drawn afresh at every training step: each named attribute is kept with
    probability ``p_attribute``, the digit is a numeral with probability ``p_numeral``, and the form
    ("d", "a d", "the digit d") varies. All randomness from ``generator`` (reproducible, resumable)."""
    u = torch.rand(len(labels), 5, generator=generator).tolist()  # (B, 5) uniforms, drawn on the CPU
    out = []
    for (y, th, sl), (u_th, u_sl, u_num, u_art, u_form) in zip(zip(labels.tolist(), thickness.tolist(),
                                                                   slant_class.tolist()), u):
        th = th if u_th < p_attribute else 1
        sl = sl if u_sl < p_attribute else None
        out.append(caption(y, th, sl, numeral=u_num < p_numeral, article=u_art < 0.75, the_digit=u_form < 0.3))
    return out


def words(prompt):
    """Lower-case words of a prompt, punctuation dropped: "A thick 7, slanted left." -> [a, thick, 7, slanted, left]."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt is a string, got {type(prompt).__name__}")
    return re.sub(r"[^\w\s]", " ", prompt.lower()).split()


def tokenize(prompts, max_len=MAX_LEN):
    """Prompts -> (tokens (B, max_len) long, key_mask (B, max_len) bool, True = a real token).

    Each prompt becomes START followed by its words' ids, padded with PAD. The empty prompt is START
    alone: the null prompt. An unknown word or a prompt too long is a ``ValueError``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tokens = torch.full((len(prompts), max_len), TOKEN_ID[PAD], dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ws = words(prompt)
        unknown = [w for w in ws if w not in TOKEN_ID or w in (PAD, START)]
        if unknown:
            raise ValueError(f"unknown word(s) {unknown} in prompt {prompt!r}; the vocabulary is: {' '.join(WORDS)}")
        if len(ws) > max_len - 1:
            raise ValueError(f"prompt {prompt!r} has {len(ws)} words; at most {max_len - 1} fit")
        ids = [TOKEN_ID[START]] + [TOKEN_ID[w] for w in ws]
        tokens[i, :len(ids)] = torch.tensor(ids)
    return tokens, tokens != TOKEN_ID[PAD]


def token_strings(prompt):
    """The tokens of one prompt as strings, START included: what the attention maps are drawn for."""
    return [START] + words(prompt)


# --------------------------------------------------------------------------- the model


class LatentDiffusion(nn.Module):
    """The three parts of latent diffusion in one module (so they ship as one checkpoint):

    * ``autoencoder``: images (B, 1, 32, 32) <-> latents (B, 4, 8, 8), trained first, then frozen;
    * ``text_encoder``: prompt tokens -> (B, L, context_dim) vectors;
    * ``unet``: the eps-predictor on scaled latents, cross-attending to the token vectors;

    and ``scale_factor`` (a buffer), 1 / std of the training latents, computed once after the autoencoder
    is trained (Rombach et al., 2022, Sec. 4.3.2 and their ``scale_by_std``), so that the diffusion sees
    latents of unit variance, as the schedule assumes of its data.
    """

    def __init__(self, latent_channels=4, ae_width=16, context_dim=64, text_layers=2, unet_channels=(48, 96),
                 unet_blocks=1, heads=4):
        super().__init__()
        self.autoencoder = Autoencoder(1, latent_channels, ae_width)
        self.text_encoder = TextEncoder(len(VOCAB), MAX_LEN, context_dim, text_layers, heads)
        self.unet = UNet(latent_channels, unet_channels, unet_blocks, context_dim=context_dim, heads=heads)
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.latent_shape = (latent_channels, 8, 8)

    def encode_text(self, prompts):
        """Prompts -> (context (B, L, context_dim), key_mask (B, L)) on the model's device."""
        tokens, mask = tokenize(prompts)
        device = self.scale_factor.device
        tokens, mask = tokens.to(device), mask.to(device)
        return self.text_encoder(tokens, mask), mask

    def encode_images(self, x):
        """Images (B, 1, 32, 32) -> scaled latents z = scale_factor * E(x), (B, 4, 8, 8)."""
        return self.autoencoder.encode(x) * self.scale_factor

    def decode_latents(self, z):
        """Scaled latents (B, 4, 8, 8) -> images D(z / scale_factor), (B, 1, 32, 32)."""
        return self.autoencoder.decode(z / self.scale_factor)

    def forward(self, z_t, t, context, key_mask, attention_maps=None):
        """eps prediction for scaled noisy latents z_t (B, 4, 8, 8) given token vectors."""
        return self.unet(z_t, t, context=context, key_mask=key_mask, attention_maps=attention_maps)


@torch.no_grad()
def latent_scale_factor(autoencoder, images, batch=500):
    """1 / std of the autoencoder's latents of ``images`` (all entries pooled), as a float."""
    z = torch.cat([autoencoder.encode(images[i:i + batch]) for i in range(0, len(images), batch)])
    return 1.0 / z.float().std().item()


def latent_diffusion_loss(schedule, cond_dropout=0.1):
    """The DDPM loss on scaled latents, with a caption drawn per digit and step and replaced by the null
    prompt "" with probability ``cond_dropout`` (Ho & Salimans, 2022), for guidance. ``batch`` =
    (latents, labels, thickness, slant). The text encoder trains jointly with the U-Net through this loss."""
    from .diffusion import q_sample
    from .train import _draw

    def loss_fn(model, batch, generator):
        z0, labels, thickness, slant_class = batch
        cpu_gen = torch.Generator().manual_seed(int(_draw(torch.randint, 0, 2**62, (1,), generator=generator,
                                                          device="cpu").item()))
        prompts = random_captions(labels.cpu(), thickness.cpu(), slant_class.cpu(), generator=cpu_gen)
        drop = torch.rand(len(prompts), generator=cpu_gen) < cond_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        context, mask = model.encode_text(prompts)
        t = _draw(torch.randint, 0, schedule.T, (z0.shape[0],), generator=generator, device=z0.device)
        eps = _draw(torch.randn, z0.shape, generator=generator, device=z0.device)
        z_t = q_sample(z0, t, schedule, noise=eps)
        return torch.nn.functional.mse_loss(model(z_t, t, context, mask).float(), eps)

    return loss_fn


# --------------------------------------------------------------------------- sampling


def _maps_to_image(maps, size):
    """Attention weights of one block (B, heads, h*w, L) -> (B, L, size, size), averaged over heads."""
    B, H, N, L = maps.shape
    side = int(round(N ** 0.5))
    m = maps.mean(dim=1).transpose(1, 2).reshape(B, L, side, side)  # (B, L, side, side)
    return torch.nn.functional.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def text_to_image(pipe, prompts, steps=50, w=DEFAULT_W, generator=None, return_attention=False, eta=0.0, schedule=None):
    """Images for text prompts: DDIM (``steps``, ``eta``) in latent space with classifier-free guidance
    against the null prompt, eps = eps_null + w (eps_prompt - eps_null), then the decoder.

    ``pipe``: ``pretrained.load("mnist-latent")`` (or a bare :class:`LatentDiffusion` with ``schedule=``).
    Returns images (B, 1, 32, 32) in [-1, 1] on the model's device; with ``return_attention=True`` also
    the attention maps (B, L, 32, 32) of every token (START first; see :func:`token_strings`), averaged
    over heads, attention blocks (each upsampled to 32x32) and steps, from the conditional half.
    """
    model = getattr(pipe, "model", pipe)
    schedule = schedule if schedule is not None else getattr(pipe, "schedule", None)
    if schedule is None:
        raise ValueError("no schedule: pass pretrained.load('mnist-latent') as pipe, or schedule= with a bare model")
    if isinstance(prompts, str):
        prompts = [prompts]
    w = _finite("w", w)
    B = len(prompts)
    context, mask = model.encode_text(list(prompts) + [""] * B)  # (2B, L, D): prompts, then null prompts
    maps_sum = []

    def eps_model(z_t, t):
        maps = [] if return_attention else None
        eps_c, eps_u = model(torch.cat([z_t, z_t]), torch.cat([t, t]), context, mask, maps).chunk(2)
        if return_attention:
            m = torch.stack([_maps_to_image(a[:B], 32) for a in maps]).mean(0)  # (B, L, 32, 32) conditional half
            maps_sum.append(m)
        return eps_u + w * (eps_c - eps_u)

    device = model.scale_factor.device
    z = ddim_sample(eps_model, (B, *model.latent_shape), schedule, steps=steps, eta=eta,
                    generator=generator, device=device)
    images = model.decode_latents(z).clamp(-1, 1)  # the decoder's output range is not bounded by construction
    if not return_attention:
        return images
    return images, torch.stack(maps_sum).mean(0)

