"""Checks for lesson 06 (classifier guidance): grad log p(y | x_t) by autograd, the guided eps (Dhariwal &
Nichol, 2021, Algorithm 2), the mean-shift sampler (their Algorithm 1), and the widget question "the smallest
scale at which all ten digits are right".

Each check runs the learner's function on a labelled 2-D Gaussian mixture whose noise-aware classifier is
exact (:func:`course_lib.guidance.mixture_classifier`) and compares its *behaviour* with
:mod:`course_lib.guidance` (the reference). When the result is wrong, the check also computes the usual
mistakes (a wrong sign, a missing sqrt(1 - alpha_bar), the logits instead of log p, the classifier at a step
index, ...) and, if the learner's result matches one of them, its hint names that mistake.
"""

import math

import torch

from ..diffusion import predict_x0
from ..guidance import classifier_log_prob_grad, classifier_mean_shift_sample, ddpm_variance, mixture_classifier
from ..samplers import ddim_timesteps, ddpm_step
from ..schedules import make_schedule
from ..score import GaussianMixture, exact_eps
from . import _close, diagnose, expect_tensor, fail, passed


def _expect_detached(ex, value, name):
    if value.requires_grad or value.grad_fn is not None:
        fail(ex, f"{name} still carries an autograd graph (requires_grad={value.requires_grad})",
             "forgot to detach: return grad.detach() (torch.autograd.grad gives a tensor without a graph "
             "unless create_graph=True). A graph kept at every sampling step holds all the activations of the "
             "classifier in memory and lets later steps backpropagate through earlier ones")


def labelled_mixture():
    """Three labelled blobs in 2-D; the label of a point is its component."""
    return GaussianMixture([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.6, 0.6, 0.6], [0.5, 0.3, 0.2])


def _setup(seed):
    schedule = make_schedule("linear", 1000)
    mix = labelled_mixture()
    g = torch.Generator().manual_seed(seed)
    x = 2.5 * torch.randn((24, 2), generator=g)
    y = torch.arange(24) % 3
    return schedule, mix, mixture_classifier(mix, schedule), exact_eps(mix, schedule), x, y


def _grad_of(fn_of_x, x):
    """grad_x of fn_of_x(x).sum(), float64."""
    x = x.detach().double().requires_grad_(True)
    (g,) = torch.autograd.grad(fn_of_x(x).sum(), x)
    return g


# ----------------------------------------------------------------------------------------------
# Exercise 6.1: grad log p(y | x_t) by autograd
# ----------------------------------------------------------------------------------------------

def _grad_variants(classifier, x, t, y):
    B = x.shape[0]
    rows = torch.arange(B)

    def pick(values):
        return values[rows, y]

    good = _grad_of(lambda v: pick(torch.log_softmax(classifier(v, t), 1)), x)
    return good, [
        (-good, "wrong sign: guidance climbs log p(y | x_t), so return +grad log p(y | x_t), the direction in which "
                "the classifier grows MORE sure of y (the sign flip comes later, in eps = eps - s sqrt(1 - alpha_bar) grad)"),
        (_grad_of(lambda v: pick(classifier(v, t)), x),
         "that is the gradient of the logit of y, not of log p(y | x_t): apply torch.log_softmax to the logits first. "
         "log p(y | x) = logit_y - logsumexp(logits), and the logsumexp term has a gradient of its own"),
        (_grad_of(lambda v: pick(torch.softmax(classifier(v, t), 1)), x),
         "that is grad p(y | x_t), not grad log p(y | x_t): differentiate the log-softmax (grad log p = grad p / p)"),
        (good / B, "divided by the batch size: you averaged the selected log-probabilities (.mean()) before "
                   "differentiating; use .sum(), so that each sample keeps its own full gradient"),
        (_grad_of(lambda v: torch.log_softmax(classifier(v, t), 1), x),
         "summed log p over ALL classes: select the column of each sample's own label y, "
         "log_probs[torch.arange(B), y], before summing"),
    ]


def check_grad_log_p(grad_log_p_fn):
    """``grad_log_p_fn(classifier, x_t, t, y)`` -> grad_{x_t} log p(y | x_t, t): x_t's shape, detached, with the
    caller's x_t left untouched."""
    ex = "6.1"
    hint = ("x = x_t.detach().requires_grad_(True); log_probs = torch.log_softmax(classifier(x, t), dim=-1); "
            "select log_probs[torch.arange(B), y], sum, and return torch.autograd.grad(that, x)[0]")
    schedule, mix, classifier, _, x, y = _setup(61)
    for t in (50, 400):
        x_in = x.clone()
        value = grad_log_p_fn(classifier, x_in, t, y)
        expect_tensor(ex, value, x.shape, "grad")
        if x_in.requires_grad or x_in.grad is not None or not torch.equal(x_in, x):
            fail(ex, "your function changed the x_t it was given (it now requires grad, has a .grad, or new values)",
                 "differentiate with respect to a copy: x = x_t.detach().requires_grad_(True)")
        _expect_detached(ex, value, "grad")
        good, mistakes = _grad_variants(classifier, x, t, y)
        diagnose(ex, value, good, mistakes, f"grad log p(y | x_t) at t = {t}", hint)
    # the closed form: class score minus mixture score (Bayes' rule on scores)
    ab = schedule.alpha_bars[400].item()
    noised = mix.noised(ab)
    var = ab * mix.stds[y] ** 2 + 1 - ab  # (B,)
    class_score = (math.sqrt(ab) * mix.means[y] - x.double()) / var[:, None]
    closed = class_score - noised.score(x.double())
    value = grad_log_p_fn(classifier, x.double(), 400, y)
    diagnose(ex, value, closed, [], "grad log p(y | x_t) against Bayes' rule", hint)
    # images (B, C, H, W) and a batch of different timesteps
    torch.manual_seed(0)
    net = _TinyImageClassifier()
    imgs = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(62))
    ts, ys = torch.tensor([0, 100, 200, 500, 800, 999]), torch.tensor([0, 1, 2, 3, 4, 5])
    value = grad_log_p_fn(net, imgs, ts, ys)
    expect_tensor(ex, value, imgs.shape, "grad for a batch of images")
    diagnose(ex, value, classifier_log_prob_grad(net, imgs, ts, ys), [], "grad for (B, C, H, W) images", hint)
    passed(ex, "grad log p(y | x_t) by autograd; on the exact mixture classifier it equals the class's score minus "
               "the mixture's score, grad log p(x_t | y) - grad log p(x_t) (Bayes' rule on scores).")


class _TinyImageClassifier(torch.nn.Module):
    """A fixed random conv classifier with a time input, for shape checks."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(63)
        self.w = torch.nn.Parameter(torch.randn((8, 1, 3, 3), generator=g) * 0.5, requires_grad=False)
        self.head = torch.nn.Parameter(torch.randn((8, 6), generator=g), requires_grad=False)

    def forward(self, x, t):
        t = torch.as_tensor(t).expand(x.shape[0]).float()
        h = torch.tanh(torch.nn.functional.conv2d(x, self.w, padding=1)).mean((2, 3))  # (B, 8)
        return (h * (1 + t[:, None] / 1000)) @ self.head  # (B, 6)


# ----------------------------------------------------------------------------------------------
# Exercise 6.2: the guided eps (Algorithm 2)
# ----------------------------------------------------------------------------------------------

def _eps_variants(model, classifier, x, t, y, s, schedule):
    ab = schedule.alpha_bars.double()[t].item()
    B = x.shape[0]
    rows = torch.arange(B)
    tb = torch.full((B,), t)
    eps = model(x, tb).double()
    g, mistakes = _grad_variants(classifier, x, t, y)
    g_logit = mistakes[1][0]
    x0_hat = predict_x0(x.double(), eps, t, schedule).detach()
    g_x0 = _grad_of(lambda v: torch.log_softmax(classifier(v, t), 1)[rows, y], x0_hat)
    g_through = _grad_of(lambda v: torch.log_softmax(classifier(predict_x0(v, model(v, tb).double(), t, schedule), t),
                                                     1)[rows, y], x)
    g_step0 = _grad_of(lambda v: torch.log_softmax(classifier(v, 0), 1)[rows, y], x)
    c = math.sqrt(1 - ab)
    good = eps - s * c * g
    return good, [
        (eps + s * c * g, "wrong sign: eps points AWAY from the data (eps = -sqrt(1 - alpha_bar) score), so adding "
                          "grad log p(y | x_t) to the score means SUBTRACTING s sqrt(1 - alpha_bar_t) grad from eps"),
        (eps - s * g, "missing the factor sqrt(1 - alpha_bar_t): eps = -sqrt(1 - alpha_bar_t) * score, so a shift of the "
                      "score by s grad is a shift of eps by -s sqrt(1 - alpha_bar_t) grad (Dhariwal & Nichol, eq. 14)"),
        (eps - s * (1 - ab) * g, "use sqrt(1 - alpha_bar_t), not (1 - alpha_bar_t): the factor is the std of the noise in x_t"),
        (eps - s * math.sqrt(ab) * g, "the factor is sqrt(1 - alpha_bar_t), not sqrt(alpha_bar_t)"),
        (eps - s * s * c * g, "the scale is applied twice (s^2): multiply the gradient by s once"),
        (eps - s * c * g_logit, "the gradient of the logit of y, not of log p(y | x_t): apply torch.log_softmax first"),
        (eps - s * c * g_x0, "the gradient was taken with respect to x0_hat (the classifier fed the predicted clean "
                             "image), not x_t: the noise-aware classifier reads x_t itself, and the score being "
                             "corrected is that of p(x_t)"),
        (eps - s * c * g_through, "the classifier was fed x0_hat(x_t) and differentiated through the denoiser: that is "
                                  "the 'loss on x0_hat' trick of other tutorials, not classifier guidance with a "
                                  "noise-aware classifier; call classifier(x_t, t) on x_t itself"),
        (eps - s * c * g_step0, "the classifier was called at t = 0 (a clean image) rather than at the timestep t of x_t"),
    ]


def check_guided_eps(guided_eps_fn):
    """``guided_eps_fn(model, classifier, x_t, t, y, s, schedule)`` -> eps(x_t) - s sqrt(1 - alpha_bar_t) grad log p(y | x_t)."""
    ex = "6.2"
    hint = ("eps_guided = model(x_t, t) - s * sqrt(1 - alpha_bar_t) * grad_{x_t} log p(y | x_t, t) "
            "(Dhariwal & Nichol, 2021, Algorithm 2 / eq. 14), with grad from your grad_log_p")
    schedule, mix, classifier, model, x, y = _setup(64)
    for t, s in ((300, 2.5), (700, 4.0)):
        value = guided_eps_fn(model, classifier, x.clone(), t, y, s, schedule)
        expect_tensor(ex, value, x.shape, "eps_guided")
        _expect_detached(ex, value, "eps_guided")
        good, mistakes = _eps_variants(model, classifier, x, t, y, s, schedule)
        diagnose(ex, value, good, mistakes, f"eps_guided at t = {t}, s = {s}", hint)
    # s = 1 with the exact classifier is the exact class-conditional eps: -sqrt(1 - ab) grad log p(x_t | y)
    t = 300
    ab = schedule.alpha_bars.double()[t].item()
    var = ab * mix.stds[y] ** 2 + 1 - ab
    cond = -math.sqrt(1 - ab) * (math.sqrt(ab) * mix.means[y] - x.double()) / var[:, None]
    value = guided_eps_fn(model, classifier, x.clone(), t, y, 1.0, schedule)
    diagnose(ex, value, cond, [], "eps_guided at s = 1 against the exact class-conditional eps", hint)
    passed(ex, "the guided eps; at s = 1 with an exact classifier it IS the class-conditional model's eps, "
               "-sqrt(1 - alpha_bar_t) grad log p(x_t | y).")


# ----------------------------------------------------------------------------------------------
# Exercise 6.3: the mean-shift sampler (Algorithm 1)
# ----------------------------------------------------------------------------------------------

def _mean_shift_variant(model, classifier, y, s, x_T, schedule, steps, seed, clf_time="t", variance="small",
                        sign=1.0, power=1, grad_at="x_t"):
    """The mean-shift sampler with one mistake switched on."""
    g = torch.Generator().manual_seed(seed)
    ts = ddim_timesteps(schedule.T, steps).tolist()
    t_prevs = ts[1:] + [-1]
    x = x_T
    for i, (t, t_prev) in enumerate(zip(ts, t_prevs)):
        eps = model(x, torch.full((x.shape[0],), t))
        clf_t = {"t": t, "i": i, "t_prev": max(t_prev, 0)}[clf_time]
        sigma2 = ddpm_variance(t, t_prev, schedule)
        if variance == "std":
            sigma2 = math.sqrt(sigma2)
        elif variance == "large":
            ab, ab_prev = schedule.alpha_bars.double()[t].item(), (schedule.alpha_bars.double()[t_prev].item()
                                                                   if t_prev >= 0 else 1.0)
            sigma2 = 1 - ab / ab_prev
        x_prev = ddpm_step(x, eps, t, t_prev, schedule, generator=g)
        point = x if grad_at == "x_t" else x_prev
        x = x_prev + sign * s**power * sigma2 * classifier_log_prob_grad(classifier, point, clf_t, y)
    return x


def check_mean_shift_sample(mean_shift_sample_fn):
    """``mean_shift_sample_fn(model, classifier, y, s, x_T, schedule, steps, generator)`` -> x_0, against
    :func:`course_lib.guidance.classifier_mean_shift_sample` from the same noise."""
    ex = "6.3"
    hint = ("for each (t, t_prev) of samplers.ddim_timesteps(schedule.T, steps) (then t_prev = -1): eps = model(x, t); "
            "grad = grad_log_p(classifier, x, t, y) at the ORIGINAL t; x = samplers.ddpm_step(x, eps, t, t_prev, "
            "schedule, generator=generator) + s * Sigma * grad, Sigma = (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev) "
            "(0 at the last step)")
    schedule, mix, classifier, model, _, _ = _setup(65)
    seed, steps, s = 6, 10, 2.0
    x_T = torch.randn((60, 2), generator=torch.Generator().manual_seed(66))
    y = torch.arange(60) % 3
    value = mean_shift_sample_fn(model, classifier, y, s, x_T.clone(), schedule, steps, torch.Generator().manual_seed(seed))
    expect_tensor(ex, value, x_T.shape, "x_0")
    good = classifier_mean_shift_sample(model, classifier, y, s, x_T.shape, schedule, steps=steps,
                                        generator=torch.Generator().manual_seed(seed), x_T=x_T)
    args = (model, classifier, y, s, x_T, schedule, steps, seed)
    mistakes = [
        (_mean_shift_variant(*args, clf_time="i"),
         "the classifier was called with the step index i (0, 1, 2, ...) instead of the timestep t: it was trained on "
         "the original t in 0..T-1, and with fewer steps than T the index is a much less noisy time than x_t's"),
        (_mean_shift_variant(*args, clf_time="t_prev"),
         "the classifier was called at t_prev, the timestep the step goes TO; grad log p(y | x_t) is taken at x_t and t"),
        (_mean_shift_variant(*args, variance="std"),
         "the mean was moved by s * sigma * grad: Algorithm 1 uses the variance Sigma = sigma^2, not the std"),
        (_mean_shift_variant(*args, variance="large"),
         "you used Sigma = beta_t = 1 - alpha_bar_t / alpha_bar_prev (the 'large' variance); ddpm_step draws its noise "
         "with the posterior variance (1 - ab_prev) / (1 - ab_t) * beta_t, and the shift must use that same Sigma"),
        (_mean_shift_variant(*args, sign=-1.0),
         "wrong sign: Algorithm 1 moves the mean UP the gradient, mu + s Sigma grad log p(y | x_t)"),
        (_mean_shift_variant(*args, power=2), "the scale is applied twice (s^2): multiply by s once"),
        (_mean_shift_variant(*args, grad_at="x_prev"),
         "the gradient was taken at the new point x_prev after the step; Algorithm 1 shifts the mean of the step by "
         "the gradient at x_t, the point the step starts from"),
    ]
    diagnose(ex, value, good, mistakes, "x_0 of the mean-shift sampler", hint)
    accuracy = (mix.responsibilities(value.double()).argmax(1) == y).float().mean().item()
    passed(ex, f"the same samples as guidance.classifier_mean_shift_sample; {accuracy:.0%} of them land in their "
               f"class's blob at s = {s:g}.")


# ----------------------------------------------------------------------------------------------
# Exercise 6.4: the widget question
# ----------------------------------------------------------------------------------------------

def smallest_all_right(widget):
    """The smallest slider scale at which every sample of the widget's batch is its asked-for digit (None if none)."""
    for s in widget.scale.options:
        if widget.evaluate(s)["all_right"]:
            return s
    return None


def most_digits_right(widget):
    """The smallest slider scale with the most digits whose every sample is right, and that count."""
    counts = [(widget.evaluate(s)["digits_right"], -s) for s in widget.scale.options]
    best, neg_s = max(counts)
    return -neg_s, best


def check_most_digits_right(answer, widget):
    """Widget exercise: ``answer`` should be the smallest scale s on the slider of
    :func:`course_lib.widgets.classifier_guidance_explorer` at which the readout "digits with every sample right"
    is highest."""
    ex = "6.4"
    options = list(widget.scale.options)
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or float(answer) not in options:
        fail(ex, f"answer should be one of the slider's scales {options}, got {answer!r}",
             "read the scale s off the slider where 'digits with every sample right' is highest")
    expected, best = most_digits_right(widget)
    answer = float(answer)
    r = widget.evaluate(answer)
    if r["digits_right"] < best:
        better = [s for s in options if widget.evaluate(s)["digits_right"] == best]
        fail(ex, f"at s = {answer:g} {r['digits_right']}/10 digits have every sample right, but the slider reaches "
                 f"{best}/10", f"visit every notch: the best count is reached at s = {', '.join(f'{s:g}' for s in better)}")
    if answer > expected:
        fail(ex, f"s = {answer:g} reaches {best}/10, but so does the smaller s = {expected:g}",
             "you are asked for the SMALLEST scale with the best count: move the slider down notch by notch")
    base = widget.evaluate(options[0])
    passed(ex, f"s = {answer:g} is the smallest scale with the most digits right ({best}/10, accuracy "
               f"{r['accuracy']:.0%}); within-class spread {r['spread']:.1f} there against {base['spread']:.1f} at "
               f"s = {options[0]:g}. " + ("Past it, a larger scale buys no more right digits, only less diversity."
                                          if answer < max(options) else
                                          "It is the largest scale on the slider: more right digits would need an "
                                          "even larger scale, at even less diversity."))
