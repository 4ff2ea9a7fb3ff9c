"""Speed benchmark of the default U-Net on the current device: ``python -m course_lib.bench``.

Prints training images/s of :func:`course_lib.train.train` (with its speed settings: bf16 autocast
where the hardware has it natively, channels_last for fp32 on the CPU, TF32 and cudnn.benchmark on CUDA)
beside a plain float32 loop of the same network (the baseline, and the ratio), sampling (network
evaluations) images/s, and the wall-clock time of DDPM with 1,000 steps against DDIM with 50 steps
for one batch. The weights do not matter for speed, so a freshly initialised class-conditional
U-Net is used. ``--grid`` also times train() under each combination of bf16, channels_last and
torch.compile (:func:`settings_grid`), the measurement that train()'s per-device defaults should follow.
"""

import argparse
import time
import warnings

import torch

from .nets import UNet, count_parameters
from .samplers import ddim_sample, ddpm_sample
from .schedules import make_schedule
from .train import backend_flags, default_device, diffusion_loss, train


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _plain_fp32_images_per_s(loss_fn, device, batch, steps, generator):
    """The baseline: float32, default memory format, no backend flags, no EMA or clipping."""
    model = UNet(num_classes=10).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        loss = loss_fn(model, (x, y), generator)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _train_images_per_s(loss_fn, device, batch, steps, **settings):
    """What :func:`train` itself reaches (EMA, clipping and its speed settings included); ``settings`` are
    train()'s ``bf16``, ``channels_last`` and ``compile`` (default: train()'s own defaults)."""
    data = (torch.randn(4 * batch, 1, 32, 32), torch.randint(0, 10, (4 * batch,)))
    kw = dict(batch_size=batch, device=device, progress=False, warmup=1, **settings)
    model = UNet(num_classes=10)
    # warm-up (allocator, cudnn.benchmark, and compilation: torch.compile keeps the compiled code of this model)
    train(model, loss_fn, data, steps=2, **kw)
    return train(model, loss_fn, data, steps=steps, **kw).images_per_second


# The settings that settings_grid compares: (bf16, channels_last, compile)
GRID = [(False, False, False), (False, True, False), (True, False, False), (True, True, False),
        (True, False, True), (True, True, True)]


def settings_grid(device=None, batch=64, train_steps=20):
    """train()'s images/s under each combination of ``GRID`` on ``device``: a list of dicts with ``bf16``,
    ``channels_last``, ``compile`` and ``train_images_per_s``. This is how train()'s defaults are chosen per
    device (bf16 where the hardware has it, channels_last only for float32 on the CPU, compile off).
    Where torch.compile fails, train() falls back to the plain model: that row's ``compile`` is then the string
    "failed: <reason>", not True, so that an eager speed is never reported as a compiled one."""
    device = torch.device(device) if device else default_device()
    loss_fn = diffusion_loss(make_schedule("linear", 1000), label_dropout=0.1, null_class=10)
    rows = []
    for bf16, channels_last, compiled in GRID:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            speed = _train_images_per_s(loss_fn, device, batch, train_steps, bf16=bf16, channels_last=channels_last,
                                        compile=compiled)
        failed = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
        rows.append({"bf16": bf16, "channels_last": channels_last, "compile": f"failed: {failed[0]}" if failed
                     else compiled, "train_images_per_s": speed})
    return rows


def bench(device=None, batch=64, train_steps=20, sample_batch=64, ddpm_steps=1000, ddim_steps=50):
    """Returns a dict: ``train_images_per_s`` (:func:`train`), ``train_fp32_images_per_s`` (plain
    loop) and their ratio ``train_speedup``, sampling speeds, and the device and thread count."""
    device = torch.device(device) if device else default_device()
    schedule = make_schedule("linear", 1000)
    loss_fn = diffusion_loss(schedule, label_dropout=0.1, null_class=10)
    g = torch.Generator(device).manual_seed(0)
    model = UNet(num_classes=10).to(device)
    results = {"device": str(device), "threads": torch.get_num_threads(), "parameters": count_parameters(model)}
    results["train_fp32_images_per_s"] = _plain_fp32_images_per_s(loss_fn, device, batch, train_steps, g)
    results["train_images_per_s"] = _train_images_per_s(loss_fn, device, batch, train_steps)
    results["train_speedup"] = results["train_images_per_s"] / results["train_fp32_images_per_s"]

    model.eval()
    net = lambda x_t, t: model(x_t, t)  # noqa: E731 - the unconditional model callable
    shape = (sample_batch, 1, 32, 32)
    with torch.no_grad(), backend_flags(device):
        for name, run in [("ddim", lambda: ddim_sample(net, shape, schedule, steps=ddim_steps, generator=g, device=device)),
                          ("ddpm", lambda: ddpm_sample(net, shape, schedule, steps=ddpm_steps, generator=g, device=device))]:
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            results[f"{name}_seconds"] = time.perf_counter() - start
    evals = sample_batch * ddim_steps
    results["network_evals_per_s"] = evals / results["ddim_seconds"]
    results["ddim_samples_per_s"] = sample_batch / results["ddim_seconds"]
    results["ddpm_samples_per_s"] = sample_batch / results["ddpm_seconds"]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps of each kind")
    parser.add_argument("--grid", action="store_true",
                        help="also time train() under each combination of bf16, channels_last and torch.compile")
    args = parser.parse_args(argv)
    r = bench(args.device, batch=args.batch, train_steps=args.train_steps, sample_batch=args.sample_batch,
              ddpm_steps=args.ddpm_steps)
    threads = f"{r['threads']} CPU thread" + ("s" if r["threads"] != 1 else "")
    print(f"device: {r['device']} ({threads}), default UNet with {r['parameters']:,} parameters")
    print(f"training:  {r['train_images_per_s']:8.1f} images/s (batch {args.batch}) with train()'s settings, "
          f"{r['train_fp32_images_per_s']:.1f} in a plain fp32 loop: {r['train_speedup']:.2f}x")
    print(f"sampling:  {r['network_evals_per_s']:8.1f} network evaluations/s (batch {args.sample_batch})")
    print(f"DDIM-50:   {r['ddim_seconds']:8.2f} s for {args.sample_batch} images ({r['ddim_samples_per_s']:.2f} images/s)")
    print(f"DDPM-{args.ddpm_steps}: {r['ddpm_seconds']:8.2f} s for {args.sample_batch} images "
          f"({r['ddpm_samples_per_s']:.3f} images/s), {r['ddpm_seconds'] / r['ddim_seconds']:.1f}x DDIM-50")
    if args.grid:
        print(f"train() settings, batch {args.batch} (images/s):")
        print("| bf16 | channels_last | compile | images/s |\n|---|---|---|---|")
        for row in settings_grid(args.device, batch=args.batch, train_steps=args.train_steps):
            print(f"| {row['bf16']} | {row['channels_last']} | {row['compile']} | {row['train_images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
