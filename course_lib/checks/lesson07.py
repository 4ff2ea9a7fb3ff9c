"""Checks for lesson 07 (classifier-free guidance): label dropout, the guided eps from one batch of 2B,
converting guidance strengths between conventions, and the widget question "the smallest s at which
every digit of the batch is classified as asked".

Each check runs the learner's function on small inputs and compares its *behaviour* with
:mod:`course_lib.guidance` (the reference). When the result is wrong, the check compares it with the
usual mistakes (w and s confused, eps_c and eps_u swapped, dropout with probability 1 - p, the whole
batch dropped at once, ...) and names the one it matches.
"""

import math

import torch

from ..guidance import CFG_CONVENTIONS, classifier_free, s_from
from . import expect_on_meta, expect_tensor, fail, passed


def _close(a, b, atol=1e-5, rtol=1e-4):
    return (isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.isfinite(a).all())
            and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol))


# ----------------------------------------------------------------------------------------------
# Exercise 7.1: label dropout (Ho & Salimans, 2022, Algorithm 1)
# ----------------------------------------------------------------------------------------------

def _dropout_call(fn, y, p, null_class, generator):
    y_before = y.clone()
    out = fn(y, p, null_class, generator=generator)
    if not torch.equal(y, y_before):
        fail("7.1", "your function changed the labels you passed in (in place)",
             "modified in place: y[mask] = null_class overwrites the caller's tensor, i.e. the data set's labels, "
             "so every later epoch sees fewer real labels. Build a new tensor: torch.where(drop, null, y)")
    expect_tensor("7.1", out, y.shape, f"drop_labels(y of shape {tuple(y.shape)}, p={p})")
    if out.is_floating_point():
        fail("7.1", f"your labels have dtype {out.dtype}", "labels are integers: keep y's dtype (torch.full_like(y, null_class))")
    return out


def check_drop_labels(drop_labels_fn):
    """``drop_labels_fn(y, p_uncond, null_class, generator=None)`` -> labels with each entry independently
    replaced by ``null_class`` with probability ``p_uncond``, the others unchanged."""
    ex = "7.1"
    hint = ("draw one uniform number per label, drop = torch.rand(y.shape, generator=generator, device=y.device) "
            "< p_uncond, and return torch.where(drop, torch.full_like(y, null_class), y)")
    null = 10
    n = 20_000
    y = torch.arange(n) % 10
    # 1. each label on its own, not the whole batch at once
    whole = 0
    g = torch.Generator().manual_seed(72)
    for _ in range(40):
        y_small = torch.arange(64) % 10
        out = _dropout_call(drop_labels_fn, y_small, 0.5, null, g)
        whole += (out != y_small).sum().item() in (0, 64)
    if whole > 20:
        fail(ex, "in batches of 64 labels with p_uncond = 0.5 you dropped either all of them or none",
             "labels dropped for the whole batch at once: draw one random number PER LABEL, torch.rand(y.shape), "
             "so that each batch mixes conditional and unconditional examples")
    # 2. the rate, the null class, the untouched labels
    for p in (0.1, 0.3):
        out = _dropout_call(drop_labels_fn, y, p, null, torch.Generator().manual_seed(71))
        changed = out != y
        if changed.any() and not (out[changed] == null).all():
            others = out[changed & (out != null)].unique().tolist()[:5]
            fail(ex, f"labels were changed to values other than the null class {null}, e.g. {others}",
                 f"null class not used: a dropped label must become null_class = {null} (the extra label the network "
                 "learns as 'no label'), not 0, -1 or a random class")
        rate = changed.double().mean().item()
        sd = math.sqrt(p * (1 - p) / n)
        if abs(rate - (1 - p)) < 5 * sd:
            fail(ex, f"with p_uncond = {p} you dropped {rate:.3f} of the labels",
                 f"dropout applied with probability 1 - p: drop when torch.rand(...) < p_uncond, "
                 f"not >= (p_uncond is the probability of DROPPING, 0.1 in Ho & Salimans)")
        if abs(rate - p) > 5 * sd:
            fail(ex, f"with p_uncond = {p} you dropped {rate:.3f} of the labels (expected {p} +- {5 * sd:.3f})", hint)
    # 3. a fresh mask at every call, drawn from the generator
    g = torch.Generator().manual_seed(73)
    first = _dropout_call(drop_labels_fn, y[:256], 0.5, null, g)
    second = _dropout_call(drop_labels_fn, y[:256], 0.5, null, g)
    if torch.equal(first, second):
        fail(ex, "two calls with the same generator dropped exactly the same labels",
             "the same dropout mask reused: draw a new mask at every call from the generator you are given "
             "(do not create or re-seed a generator inside, do not cache the mask)")
    again = _dropout_call(drop_labels_fn, y[:256], 0.5, null, torch.Generator().manual_seed(73))
    if not torch.equal(first, again):
        fail(ex, "two calls with equally seeded generators gave different results",
             "draw the mask with generator=generator (torch.rand(y.shape, generator=generator, device=y.device)), "
             "so that a seeded training run is reproducible")
    # 4. the two ends
    if not torch.equal(_dropout_call(drop_labels_fn, y[:500], 0.0, null, torch.Generator().manual_seed(74)), y[:500]):
        fail(ex, "p_uncond = 0 changed some labels", "with p_uncond = 0 nothing is dropped: use a strict torch.rand(...) < p")
    if not (_dropout_call(drop_labels_fn, y[:500], 1.0, null, torch.Generator().manual_seed(75)) == null).all():
        fail(ex, "p_uncond = 1 kept some labels", "with p_uncond = 1 every label becomes the null class")
    # 5. the device probe: labels on the meta device (a stand-in for the GPU, where train() makes its generator too)
    expect_on_meta(ex, lambda: drop_labels_fn(y[:64].to("meta"), 0.1, null, generator=None), "your drop_labels",
                   "your function created a tensor on the CPU while y was on another device (a GPU in the notebook, "
                   "where train() also makes its generator there): draw the mask on y's device, "
                   "torch.rand(y.shape, generator=generator, device=y.device)")
    passed(ex, "each label is dropped on its own with probability p_uncond, to the null class, with a fresh, "
               "reproducible mask at every call.")


# ----------------------------------------------------------------------------------------------
# Exercise 7.2: the guided eps, both passes in one batch
# ----------------------------------------------------------------------------------------------

class _CountingNet(torch.nn.Module):
    """A fixed random class-conditional 2-D network that records the batch size of every call."""

    def __init__(self, num_classes=3, seed=7):
        super().__init__()
        from ..nets import ConditionalMLPDenoiser

        with torch.random.fork_rng(devices=[]):  # leave the caller's global generator alone
            self.inner = ConditionalMLPDenoiser(num_classes, hidden=32, layers=2)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.inner.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.null_class = self.inner.null_class
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return self.inner(x, t, y)


def _cfg_variants(net, x_t, t, y, s, null):
    with torch.no_grad():
        eps_c = net.inner(x_t, t, y)
        eps_u = net.inner(x_t, t, torch.full_like(y, null))
        eps_0 = net.inner(x_t, t, torch.zeros_like(y))
    good = eps_u + s * (eps_c - eps_u)
    return good, [
        ((1 + s) * eps_c - s * eps_u,
         "w and s confused: that is Ho & Salimans' (1 + w) eps_c - w eps_u with w = s. In the course's convention "
         "eps_u + s (eps_c - eps_u), s = 1 must give the conditional eps exactly (their w = s - 1)"),
        (eps_u + (s - 1) * (eps_c - eps_u),
         "off by one: you used s - 1 (Ho & Salimans' w) as the weight of eps_c - eps_u; the course's s multiplies it directly"),
        (eps_c + s * (eps_u - eps_c),
         "eps_c and eps_u swapped: guidance starts from the UNCONDITIONAL eps and moves s times along "
         "(eps_c - eps_u); check which half of the 2B batch carries the labels y and which the null class"),
        (eps_c, "null class not used: your 'unconditional' pass got the labels y too, so eps_u = eps_c; "
                "the second half of the batch needs torch.full_like(y, null_class)"),
        (eps_u + s * (eps_c - eps_0),
         "null class not used: the unconditional pass must use null_class, not label 0 (0 is a real digit)"),
        (eps_0 + s * (eps_c - eps_0),
         "null class not used: the unconditional pass must use null_class, not label 0 (0 is a real digit)"),
        (eps_u + s * (eps_u - eps_c), "sign of the guidance direction: move along eps_c - eps_u, towards the class"),
    ]


def check_guided_eps(guided_eps_fn):
    """``guided_eps_fn(net, x_t, t, y, s, null_class)`` -> eps_u + s (eps_c - eps_u) with eps_c = net(x_t, t, y),
    eps_u = net(x_t, t, null), computed in ONE call of ``net`` on a batch of 2B."""
    ex = "7.2"
    net = _CountingNet()
    g = torch.Generator().manual_seed(72)
    B = 16
    x_t = torch.randn((B, 2), generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, 3, (B,), generator=g)
    hint = ("eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])) with null = "
            "torch.full_like(y, null_class); eps_c, eps_u = eps.chunk(2); return eps_u + s * (eps_c - eps_u)")
    for s in (3.0, 0.0, 1.0, 7.5, 2.0):
        net.calls.clear()
        with torch.no_grad():
            out = guided_eps_fn(net, x_t, t, y, s, net.null_class)
        expect_tensor(ex, out, x_t.shape, f"the guided eps at s = {s}")
        good, mistakes = _cfg_variants(net, x_t, t, y, s, net.null_class)
        if not _close(out, good):
            for wrong, mistake in mistakes:
                if _close(out, wrong):
                    fail(ex, f"at s = {s} your guided eps matches a common mistake", mistake)
            fail(ex, f"at s = {s} your guided eps is off by up to {(out - good).abs().max().item():.3g}", hint)
        ref = classifier_free(net.inner, y, s)(x_t, t)
        if not _close(out, ref):  # the same thing through the library (a second opinion on the reference)
            fail(ex, f"at s = {s} your guided eps differs from guidance.classifier_free", hint)
        if s not in (0.0, 1.0):
            if net.calls == [B, B]:
                fail(ex, f"at s = {s} you called the network twice, on {B} points each",
                     "two separate passes: the values are right, but the exercise asks for ONE call on the batch "
                     "[x_t; x_t] of size 2B with labels [y; null] (one larger batch keeps the hardware busier "
                     "than two small ones, Section 3 of the lesson)")
            if net.calls != [2 * B]:
                fail(ex, f"at s = {s} the network was called with batch sizes {net.calls}, expected one call with {2 * B}",
                     hint)
    passed(ex, "eps_u + s (eps_c - eps_u) from one batch of 2B, right at s = 0, 1, 2, 3 and 7.5.")


# ----------------------------------------------------------------------------------------------
# Exercise 7.3: one guidance strength, four conventions
# ----------------------------------------------------------------------------------------------

def _convention_eps(convention, value, eps_c, eps_u):
    """The guided eps as each convention writes it (Ho & Salimans, 2022, eq. 6; diffusers; the lerp form)."""
    if convention == "ho_salimans":
        return (1 + value) * eps_c - value * eps_u
    if convention == "lerp":
        return (1 - value) * eps_u + value * eps_c
    return eps_u + value * (eps_c - eps_u)  # "course" and "diffusers"


def check_to_course_s(to_course_s_fn):
    """``to_course_s_fn(value, convention)`` -> the course's s for every key of ``guidance.CFG_CONVENTIONS``,
    judged by behaviour: eps_u + s (eps_c - eps_u) must equal the guided eps written in that convention."""
    ex = "7.3"
    g = torch.Generator().manual_seed(73)
    eps_c, eps_u = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    mistakes = {
        ("ho_salimans", "same"): "w and s confused: Ho & Salimans' w = 0 is the plain conditional model, the course's "
                                 "s = 1 is; (1 + w) eps_c - w eps_u = eps_u + (1 + w)(eps_c - eps_u), so s = 1 + w",
        ("ho_salimans", "minus"): "off by one in the wrong direction: s = 1 + w (their w = s - 1), not w - 1",
        ("lerp", "one_minus"): "(1 - w) eps_u + w eps_c = eps_u + w (eps_c - eps_u): the lerp weight w IS s, not 1 - w",
        ("lerp", "plus"): "(1 - w) eps_u + w eps_c = eps_u + w (eps_c - eps_u): the lerp weight w IS s, no + 1",
        ("diffusers", "plus"): "diffusers' guidance_scale is already the course's s (guidance_scale = 1 is the "
                               "conditional model): no + 1",
        ("course", "plus"): "the course's own s needs no conversion",
    }
    for convention in CFG_CONVENTIONS:
        for value in (0.0, 1.0, 2.5, 7.5):
            s = to_course_s_fn(value, convention)
            if isinstance(s, torch.Tensor):
                s = s.item()
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                fail(ex, f"to_course_s({value}, {convention!r}) returned {s!r}", "return a number (a float)")
            target = _convention_eps(convention, value, eps_c, eps_u)
            if _close(eps_u + s * (eps_c - eps_u), target) and abs(s - s_from(convention, value)) < 1e-9:
                continue
            for (conv, kind), mistake in mistakes.items():
                wrong = {"same": value, "minus": value - 1, "one_minus": 1 - value, "plus": value + 1}[kind]
                if conv == convention and abs(s - wrong) < 1e-9:
                    fail(ex, f"to_course_s({value}, {convention!r}) = {s:g}, expected {s_from(convention, value):g}", mistake)
            fail(ex, f"to_course_s({value}, {convention!r}) = {s:g}, expected {s_from(convention, value):g}",
                 f"{convention}: {CFG_CONVENTIONS[convention]}. Write the guided eps as eps_u + s (eps_c - eps_u) and read off s")
    for bad in ("ho", "w", "guidance_scale"):
        try:
            to_course_s_fn(1.0, bad)
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001 - report what came instead
            fail(ex, f"to_course_s(1.0, {bad!r}) raised {type(err).__name__}, not ValueError",
                 "raise ValueError listing the valid conventions")
        fail(ex, f"to_course_s(1.0, {bad!r}) returned a value for an unknown convention",
             "missing ValueError: an unknown convention name must raise ValueError listing the valid ones, "
             "or a typo silently picks the wrong formula")
    passed(ex, "s = 1 + w for Ho & Salimans, s = guidance_scale for diffusers, s = w for the lerp form; "
               "unknown names raise ValueError.")


# ----------------------------------------------------------------------------------------------
# Exercise 7.4 (widget): the smallest s at which every digit of the batch is classified as asked
# ----------------------------------------------------------------------------------------------

def correct_at(net, schedule, x_T, labels, s, steps, null_class=None, clip_x0=True):
    """How many of the DDIM-``steps`` (eta = 0, deterministic) samples from ``x_T``, guided with scale ``s``
    towards ``labels``, the evaluation classifier assigns to their label (as ``widgets.cfg_explorer``)."""
    from ..metrics import predict_labels
    from ..samplers import ddim_sample

    with torch.no_grad():
        x0 = ddim_sample(classifier_free(net, labels, s, null_class), x_T.shape, schedule, steps=steps, x_T=x_T,
                         clip_x0=clip_x0)
    return int((predict_labels(x0) == labels.cpu()).sum())


def check_smallest_s(answer, net, schedule, x_T, labels, steps, s_step=0.25, null_class=None):
    """Widget exercise: ``answer`` should be the smallest s on the slider's grid (multiples of ``s_step``) at
    which all the batch's samples are classified as asked: every digit right at ``answer``, not at the notch
    below. (Two samplings of the batch; a few more to name the mistake when the answer is wrong.)"""
    ex = "7.4"
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer) or answer < 0:
        fail(ex, f"answer should be a guidance scale s >= 0, got {answer!r}", "read the s slider of the widget")
    if abs(answer / s_step - round(answer / s_step)) > 1e-6:
        fail(ex, f"{answer} is not on the slider's grid (multiples of {s_step})", "type the value the slider shows")
    B = len(labels)

    def right(s):
        return correct_at(net, schedule, x_T, labels, s, steps, null_class)

    def smallest(s):  # is s the smallest notch with every digit right?
        return right(s) == B and (s < s_step / 2 or right(s - s_step) < B)

    at_answer = right(answer)
    if at_answer == B:
        below = right(answer - s_step) if answer >= s_step / 2 else None
        if below is None or below < B:
            passed(ex, f"at s = {answer:g} (Ho & Salimans' w = {answer - 1:g}) all {B} digits are classified as asked"
                       + (f", at s = {answer - s_step:g} only {below}" if below is not None else "")
                       + ". Guidance buys this with diversity: compare the within-class spread in the lesson's table.")
            return
        fail(ex, f"at s = {answer:g} every digit is right, but at s = {answer - s_step:g} they all are too",
             "you are asked for the SMALLEST s: move the slider down notch by notch until a digit goes wrong")
    if smallest(answer + 1):
        fail(ex, f"{answer:g} is Ho & Salimans' w for the right answer, not the course's s",
             "w and s confused: the widget's slider is s (eps_u + s (eps_c - eps_u), s = 1 plain conditional); "
             "w = s - 1. Type the s the slider shows")
    fail(ex, f"at s = {answer:g} only {at_answer} of {B} digits are classified as asked",
         "move the s slider UP until the readout says all digits are right, then check the notch below")
