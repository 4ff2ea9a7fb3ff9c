"""course_lib.train: losses, randomness, devices, backend flags, epochs and learning-rate schedules.

Every test here is fast (a few optimiser steps of tiny networks on the CPU).
"""

import math
import warnings

import pytest
import torch

from course_lib import nets, schedules, train


def tiny_unet(num_classes=None):
    return nets.UNet(channels=(8, 16), blocks=1, num_classes=num_classes)


def digits(n=12, generator=None):
    g = generator or torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


class Spy(torch.nn.Module):
    """An eps-model that records the labels it was given and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return x * self.w


# ----------------------------------------------------------------------------- diffusion_loss


def test_labels_without_dropout_are_passed_through():
    """Issue 13 item 2: torch.full_like(y, None) raised a TypeError when label_dropout was 0."""
    x, y = digits()
    spy = Spy()
    loss = train.diffusion_loss(schedules.make_schedule("linear", 1000))(spy, (x, y), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert torch.equal(spy.seen[-1], y)


def test_label_dropout_one_replaces_every_label_by_the_null_class():
    x, y = digits()
    spy = Spy()
    loss_fn = train.diffusion_loss(schedules.make_schedule("linear", 1000), label_dropout=1.0, null_class=10)
    loss_fn(spy, (x, y), torch.Generator().manual_seed(0))
    assert (spy.seen[-1] == 10).all()


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_label_dropout_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="probability"):
        train.diffusion_loss(schedules.make_schedule("linear", 1000), label_dropout=bad, null_class=10)


def test_diffusion_loss_warns_on_a_schedule_that_never_reaches_noise():
    """Issue 13 item 18: linear betas at T = 200 end at alpha_bar = 0.13."""
    with pytest.warns(UserWarning, match=r"alpha_bar_\(T-1\) = 0\.13.*scale_to_T=True"):
        train.diffusion_loss(schedules.make_schedule("linear", 200))


@pytest.mark.parametrize("schedule", [("linear", 1000, {}), ("cosine", 1000, {}), ("cosine", 50, {}),
                                      ("linear", 200, {"scale_to_T": True}),
                                      ("linear", 100, {"beta_start": 1e-3, "beta_end": 0.2})])  # lesson 03's toy
def test_diffusion_loss_is_quiet_on_schedules_that_reach_noise(schedule):
    name, T, kw = schedule
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.diffusion_loss(schedules.make_schedule(name, T, **kw))


# ----------------------------------------------------------------------------- devices (issue 12 item 1)


class FakeCudaGenerator:
    """Stands in for torch.Generator(device="cuda") on a machine without one: it reports a CUDA
    device, and the patched random functions below apply torch's rule to it."""

    device = torch.device("cuda")

    def __init__(self, seed):
        self.cpu = torch.Generator().manual_seed(seed)

    def initial_seed(self):
        return self.cpu.initial_seed()


@pytest.fixture
def strict_generators(monkeypatch):
    """torch refuses a draw whose device differs from its generator's ("Expected a 'cpu' device type
    for generator but found 'cuda'"), but on the CPU it cannot show that for CUDA or meta: these
    wrappers enforce the rule for every generator, then draw on the CPU."""
    for name in ("randn", "rand", "randint", "randperm"):
        real = getattr(torch, name)

        def strict(*args, generator=None, device=None, _real=real, **kwargs):
            if generator is not None:
                want = torch.device(device if device is not None else "cpu")
                if want.type != generator.device.type:
                    raise RuntimeError(f"Expected a '{want.type}' device type for generator but found "
                                       f"'{generator.device.type}'")
                if isinstance(generator, FakeCudaGenerator):
                    generator, device = generator.cpu, "cpu"
            return _real(*args, generator=generator, device=device, **kwargs)

        monkeypatch.setattr(torch, name, strict)


@pytest.mark.parametrize("make_loss", [train.classifier_loss, lambda: train.diffusion_loss(
    schedules.make_schedule("linear", 1000), label_dropout=0.5, null_class=10)])
def test_losses_draw_with_a_generator_on_another_device(strict_generators, make_loss):
    """Issue 12: with a CUDA generator, classifier_loss drew on the CPU and failed at step 0."""
    x, y = digits(4)
    model = tiny_unet(10) if "diffusion" in make_loss().__qualname__ else nets.Classifier(width=8, feature_dim=16)
    assert torch.isfinite(make_loss()(model, (x, y), FakeCudaGenerator(0)))


def test_classifier_trains_with_a_generator_on_another_device(strict_generators):
    """The failure of issue 12: train() made a CUDA generator, classifier_loss drew on the CPU with it."""
    x, y = digits(8)
    result = train.train(nets.Classifier(width=8, feature_dim=16), train.classifier_loss(), (x, y), steps=2,
                         batch_size=4, generator=FakeCudaGenerator(0), device="cpu", progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)


@pytest.mark.parametrize("epochs", [None, 1])
def test_diffusion_training_with_a_generator_on_another_device(strict_generators, epochs):
    x, y = digits(8)
    steps = None if epochs else 2
    result = train.train(tiny_unet(10), train.diffusion_loss(schedules.make_schedule("cosine", 100), 0.5, 10),
                         (x, y), steps=steps, epochs=epochs, batch_size=4, generator=FakeCudaGenerator(0),
                         device="cpu", progress=False)
    assert all(math.isfinite(v) for v in result.losses)


def test_draws_happen_on_the_generator_device_then_move_to_the_data(strict_generators):
    """A notebook's CPU generator with data elsewhere (the meta device stands in for a GPU here; a
    whole loss cannot run on meta tensors, since check_t reads values)."""
    g = torch.Generator().manual_seed(0)
    for fn, args in [(torch.randn, ((4, 1, 8, 8),)), (torch.rand, ((4,),)), (torch.randint, (0, 10, (4,))),
                     (torch.randperm, (10,))]:
        assert train._draw(fn, *args, generator=g, device="meta").device.type == "meta"
    same = train._draw(torch.randn, (3,), generator=torch.Generator().manual_seed(1), device="cpu")
    assert torch.equal(same, torch.randn(3, generator=torch.Generator().manual_seed(1)))


def test_default_device_is_cuda_or_cpu_never_mps(monkeypatch):
    # MPS has no float64 (the schedule's alpha_bar, the samplers' coefficients): never chosen automatically
    assert isinstance(train.default_device(), torch.device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert train.default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.default_device() == torch.device("cuda")


# ----------------------------------------------------------------------------- global state (issue 13 item 6)


def test_train_leaves_the_global_generator_alone_and_is_reproducible():
    """The classifier has dropout, which draws from torch's global generator."""
    x, y = digits(16)
    models = [nets.Classifier(width=8, feature_dim=16) for _ in range(3)]  # their init draws globally
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    runs = [train.train(m, train.classifier_loss(), (x, y), steps=3, batch_size=8, seed=7, device="cpu",
                        progress=False).losses for m in models[:2]]
    assert torch.equal(torch.get_rng_state(), before)
    assert runs[0] == runs[1]
    other = train.train(models[2], train.classifier_loss(), (x, y), steps=3, batch_size=8,
                        generator=torch.Generator().manual_seed(8), device="cpu", progress=False)
    assert other.losses != runs[0]


def test_seed_and_generator_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        train.train(Spy(), train.diffusion_loss(schedules.make_schedule("linear", 1000)), digits()[0], steps=1,
                    seed=0, generator=torch.Generator(), device="cpu", progress=False)


def test_backend_flags_are_scoped_to_the_call():
    """TF32 and cudnn.benchmark are process-wide switches: on inside the block, restored after."""
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,  # noqa: E731
                     torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = (
        False, False, False)
    with train.backend_flags(torch.device("cuda")):
        assert flags() == (True, True, True)
    assert flags() == (False, False, False)
    with pytest.raises(KeyError), train.backend_flags(torch.device("cuda")):
        raise KeyError("restored on errors too")
    assert flags() == (False, False, False)
    with train.backend_flags(torch.device("cpu")):
        assert flags() == (False, False, False)


# ----------------------------------------------------------------------------- steps, epochs, lr (item 19)


class IndexRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.batches = []

    def loss(self, model, batch, generator):
        self.batches.append(batch[0].clone())
        return (model.w * batch[0].float()).mean() ** 2


def test_epochs_visit_every_example_once_per_epoch():
    data = torch.arange(10)
    rec = IndexRecorder()
    result = train.train(rec, rec.loss, data, epochs=3, batch_size=4, device="cpu", progress=False)
    assert len(result.losses) == 3 * math.ceil(10 / 4)
    assert [len(b) for b in rec.batches] == [4, 4, 2] * 3
    for e in range(3):
        assert sorted(torch.cat(rec.batches[3 * e: 3 * e + 3]).tolist()) == list(range(10))


@pytest.mark.parametrize("kw", [{}, {"steps": 5, "epochs": 1}])
def test_steps_or_epochs_exactly_one(kw):
    with pytest.raises(ValueError, match="exactly one of steps= and epochs="):
        train.train(Spy(), train.diffusion_loss(schedules.make_schedule("linear", 1000)), digits()[0],
                    device="cpu", progress=False, **kw)


@pytest.mark.parametrize("kw", [{"epochs": 0}, {"epochs": 1.5}, {"steps": 0}, {"steps": 3, "batch_size": 0}])
def test_bad_steps_epochs_batch_size_are_refused(kw):
    with pytest.raises(ValueError):
        train.train(Spy(), train.diffusion_loss(schedules.make_schedule("linear", 1000)), digits()[0],
                    device="cpu", progress=False, **kw)


def test_lr_schedules():
    cosine = train._lr_factor("cosine", warmup=10, steps=100)
    constant = train._lr_factor("constant", warmup=10, steps=100)
    assert cosine(0) == pytest.approx(0.1) and constant(0) == pytest.approx(0.1)  # warm-up: 1/10
    assert [constant(s) for s in (10, 50, 99)] == [1.0, 1.0, 1.0]
    assert cosine(10) < 1.0 and cosine(99) == pytest.approx(0.1, abs=1e-3)  # decays to 10% of lr
    assert train._lr_factor("constant", warmup=0, steps=5)(0) == 1.0  # no warm-up (was a ZeroDivisionError)


def test_constant_lr_is_applied_and_unknown_schedules_list_the_valid_ones():
    rec = IndexRecorder()
    opt_lrs = []
    real_step = torch.optim.AdamW.step

    def spy_step(self, *a, **k):
        opt_lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = spy_step
    try:
        train.train(rec, rec.loss, torch.arange(8), steps=6, batch_size=4, lr=0.01, lr_schedule="constant",
                    warmup=0, device="cpu", progress=False)
    finally:
        torch.optim.AdamW.step = real_step
    assert opt_lrs == [0.01] * 6
    with pytest.raises(ValueError, match="cosine, constant"):
        train.train(rec, rec.loss, torch.arange(8), steps=1, lr_schedule="step", device="cpu", progress=False)


# ----------------------------------------------------------------------------- speed settings (issue 12 item 3)


def test_channels_last_trains_the_same_and_hands_back_contiguous_weights():
    x, y = digits(8)
    runs = {}
    for cl in (False, True):
        r = train.train(tiny_unet(10), train.diffusion_loss(schedules.make_schedule("linear", 1000)), (x, y),
                        steps=3, batch_size=4, device="cpu", progress=False, bf16=False, channels_last=cl)
        assert all(p.is_contiguous() for m in (r.model, r.ema) for p in m.parameters())
        runs[cl] = r.losses
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_channels_last_needs_images():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        train.train(nets.MLPDenoiser(), train.diffusion_loss(schedules.make_schedule("cosine", 100)),
                    torch.randn(8, 2), steps=1, device="cpu", progress=False, channels_last=True)


def test_recipes_are_still_there():
    """Every shipped model has the recipe that made it, and every recipe's model ships; each recipe string
    in the manifest names its recipe."""
    from course_lib import pretrained

    assert set(train.RECIPES) == set(pretrained.available())
    for name in pretrained.available():
        assert pretrained.load(name).info["recipe"].startswith(f"python -m course_lib.train {name} ")
    with pytest.raises(SystemExit):
        train.main(["--help"])


def test_bench_reports_the_fp32_baseline_and_the_ratio():
    from course_lib.bench import bench

    r = bench("cpu", batch=4, train_steps=1, sample_batch=2, ddpm_steps=2, ddim_steps=2)
    assert r["train_images_per_s"] > 0 and r["train_fp32_images_per_s"] > 0
    assert r["train_speedup"] == pytest.approx(r["train_images_per_s"] / r["train_fp32_images_per_s"])


def _tiny_run(tmp_path, loss_fn, steps=20, name="ck.pt"):
    from course_lib.nets import MLPDenoiser
    from course_lib.train import train

    torch.manual_seed(0)
    model = MLPDenoiser(hidden=16, layers=1)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    return train(model, loss_fn, data, steps=steps, batch_size=8, seed=3, device="cpu", progress=False,
                 checkpoint=tmp_path / name, checkpoint_every=5, warmup=2)


def test_checkpoint_resume_continues_exactly(tmp_path):
    """A run killed after its step-10 checkpoint and started again ends with the same weights, losses and EMA
    as one uninterrupted run: the generator's state (batches, t, noise) is restored, not re-seeded."""
    from course_lib.schedules import make_schedule
    from course_lib.train import diffusion_loss

    loss = diffusion_loss(make_schedule("cosine", 100))
    full = _tiny_run(tmp_path, loss, name="full.pt")

    calls = {"n": 0}

    def dies_at_step_13(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt("killed")
        return loss(model, batch, generator)

    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path, dies_at_step_13, name="resumed.pt")
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["step"] == 10
    resumed = _tiny_run(tmp_path, loss, name="resumed.pt")
    assert len(resumed.losses) == 20
    assert resumed.losses == pytest.approx(full.losses, abs=0, rel=1e-6)
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_bad_settings(tmp_path):
    from course_lib.nets import MLPDenoiser
    from course_lib.train import classifier_loss, train

    with pytest.raises(ValueError, match="needs steps="):
        train(MLPDenoiser(), classifier_loss(), torch.zeros(4, 2), epochs=1, checkpoint=tmp_path / "c.pt", device="cpu")
    with pytest.raises(ValueError, match="checkpoint_every"):
        train(MLPDenoiser(), classifier_loss(), torch.zeros(4, 2), steps=1, checkpoint=tmp_path / "c.pt",
              checkpoint_every=0, device="cpu")


# ----------------------------------------------------------------------------- batch scaling, bf16 default, compile


def test_scale_to_batch_keeps_the_images_seen():
    same = train.scale_to_batch(64, 64, 11000, lr=2e-3, ema_decay=0.999)
    assert (same.steps, same.lr, same.ema_decay, same.warmup) == (11000, 2e-3, 0.999, 100)
    hp = train.scale_to_batch(512, 64, 11000, lr=2e-3, ema_decay=0.999)
    assert hp.batch_size == 512 and hp.steps == 1375  # 11000 * 64 / 512: the same 704,000 images
    assert hp.lr == 2e-3  # unchanged: the square-root rule (5.66e-3) sampled far worse, measured (quality.json)
    assert hp.ema_decay == pytest.approx(0.999 ** 8)  # one new step replaces eight old ones in the average
    assert hp.warmup in (12, 13)
    assert train.scale_to_batch(100, 64, 1000, lr=1e-3, ema_decay=0.99).steps == 640  # rounded up, never short
    for bad in (0, -8, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            train.scale_to_batch(bad, 64, 100, lr=1e-3, ema_decay=0.99)


@pytest.mark.parametrize("argv, batch, steps", [
    (["mnist-unet"], 64, 11000),
    (["mnist-unet", "--batch", "512"], 512, 1375),
    (["mnist-unet", "--batch", "512", "--steps", "40"], 512, 40),  # explicit steps are taken as they are
    (["mnist-noisy-classifier", "--batch", "512"], 512, 2000),  # 8000 steps of 128
])
def test_main_scales_the_recipe_to_the_batch(monkeypatch, argv, batch, steps):
    seen = {}

    class Stop(Exception):
        pass

    def fake(steps, device, checkpoint=None, batch_size=64 if argv[0] == "mnist-unet" else 128):
        seen.update(steps=steps, batch_size=batch_size)
        raise Stop

    monkeypatch.setitem(train.RECIPES, argv[0], (fake, train.RECIPES[argv[0]][1]))
    with pytest.raises(Stop):
        train.main(argv)
    assert seen == {"steps": steps, "batch_size": batch}


def test_every_recipe_takes_a_batch_size():
    import inspect

    for name, (fn, _) in train.RECIPES.items():
        assert inspect.signature(fn).parameters["batch_size"].default in (64, 128), name


def test_default_bf16_only_where_the_hardware_has_it(monkeypatch):
    assert train.default_bf16("cpu") == train.fast_cpu_bf16()
    assert train.default_bf16("mps") is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4: emulated bf16
    assert train.default_bf16("cuda") is False
    assert train._precision("cuda") == "float32, TF32"  # what the recipe writes into the manifest
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100/H200
    assert train.default_bf16("cuda") is True
    assert train._precision("cuda") == "bf16 autocast, TF32"
    assert train._precision("cpu") == ("bf16 autocast" if train.fast_cpu_bf16() else "float32")


def _mlp_run(**kw):
    torch.manual_seed(0)
    model = nets.MLPDenoiser(hidden=16, layers=1)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    loss = kw.pop("loss", train.diffusion_loss(schedules.make_schedule("cosine", 100)))
    return train.train(model, loss, data, steps=6, batch_size=8, seed=3, device="cpu", progress=False, warmup=2,
                       **kw)


def test_compile_trains_the_same_and_checkpoints_the_plain_model(tmp_path):
    """The real torch.compile on this CPU (it needs the C++ compiler; ~30 s): the same losses as without it, and
    the checkpoint holds the model's own parameter names (a compiled wrapper would prefix them with _orig_mod.)."""
    plain = _mlp_run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback here would mean the compiled path was never tried
        compiled = _mlp_run(compile=True, checkpoint=tmp_path / "c.pt", checkpoint_every=3)
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-5)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert set(state["model"]) == set(plain.model.state_dict()) == set(state["ema"])
    assert not hasattr(compiled.model, "_orig_mod")


class _BrokenCompile(torch.nn.Module):
    """What torch.compile returns where compiling fails: the error comes at the first call."""
    calls = 0

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        type(self).calls += 1
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong traceback...")


def test_a_failing_compile_falls_back_with_the_reason_and_the_same_run(monkeypatch):
    plain = _mlp_run()
    monkeypatch.setattr(torch, "compile", _BrokenCompile)
    _BrokenCompile.calls = 0
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working C\+\+ "
                                         r"compiler found\); training without it"):
        fell_back = _mlp_run(compile=True)
    assert _BrokenCompile.calls == 1  # not tried again at every step
    # the failed step's draws were rewound: exactly the run without compile
    assert fell_back.losses == plain.losses


def test_a_genuine_loss_error_is_not_hidden_by_the_compile_fallback(monkeypatch):
    class Works(torch.nn.Module):  # compiling "works": a wrapper that calls the model
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(*args)

    monkeypatch.setattr(torch, "compile", Works)

    def bad_loss(model, batch, generator):
        raise ValueError("the learner's own bug")

    with pytest.warns(UserWarning, match="torch.compile failed"), pytest.raises(ValueError, match="own bug"):
        _mlp_run(compile=True, loss=bad_loss)


def test_settings_grid_times_each_combination_and_labels_a_failed_compile(monkeypatch):
    from course_lib import bench

    monkeypatch.setattr(bench, "GRID", [(False, False, False), (False, True, False), (False, False, True)])
    monkeypatch.setattr(torch, "compile", _BrokenCompile)
    monkeypatch.setattr(bench, "UNet", lambda num_classes: tiny_unet(num_classes))
    rows = bench.settings_grid("cpu", batch=2, train_steps=1)
    assert [(r["bf16"], r["channels_last"]) for r in rows] == [(False, False), (False, True), (False, False)]
    assert rows[0]["compile"] is False and rows[1]["compile"] is False
    assert rows[2]["compile"].startswith("failed: torch.compile failed (RuntimeError: InvalidCxxCompiler")
    assert all(r["train_images_per_s"] > 0 for r in rows)
