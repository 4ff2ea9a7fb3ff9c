"""Widget factories for the lessons. Each returns an ipywidgets container whose controls and
last computed values are attributes, so a test (or a curious learner) can set ``.value`` on a
control and read what the widget computed, without a browser.

Only APIs common to ipywidgets 7.7.1 (Colab) and 8.x are used: ``IntSlider``, ``FloatSlider``,
``Dropdown``, ``HTML``, ``Output``, ``HBox``/``VBox`` and ``observe(..., names="value")``.
"""

import time

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import clear_output, display

from . import plotting
from .diffusion import q_sample
from .samplers import ddim_sample
from .schedules import SCHEDULE_NAMES, make_schedule


def _redraw(out, fig):
    """Show ``fig`` in the Output widget ``out``, replacing what was there, and free it."""
    with out:
        clear_output(wait=True)
        display(fig)
    plt.close(fig)


def forward_process_explorer(x0, schedule, noise=None, generator=None):
    """Lesson 01. A slider over t shows x_t ~ q(x_t | x_0) for the digits ``x0`` (B, 1, H, W)
    beside the log-SNR curve with the current t marked.

    Attributes: ``slider`` (t), ``x_t`` (the images shown), ``alpha_bar``, ``snr``, ``log_snr``
    at the current t, and ``readout`` (the HTML line with those numbers).
    """
    box = W.VBox()
    box.schedule = schedule
    box.noise = noise if noise is not None else torch.randn(x0.shape, generator=generator)
    box.slider = W.IntSlider(value=0, min=0, max=schedule.T - 1, description="t", continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()

    def update(change=None):
        t = box.slider.value
        box.x_t = q_sample(x0, t, schedule, noise=box.noise)
        box.alpha_bar = schedule.alpha_bars[t].item()
        box.snr = schedule.snr[t].item()
        box.log_snr = schedule.log_snr[t].item()
        box.readout.value = (f"t = {t}: &alpha;&#772;<sub>t</sub> = {box.alpha_bar:.4f}, "
                             f"SNR = {box.snr:.4g}, log-SNR = {box.log_snr:.2f}")
        fig, (ax_img, ax_snr) = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [1.4, 1]})
        plotting.show_images(box.x_t, nrow=len(x0), ax=ax_img, title=f"x_t at t = {t}")
        ax_snr.plot(schedule.log_snr.tolist())
        ax_snr.axvline(t, color="tab:red")
        ax_snr.axhline(0, color="gray", lw=0.8, ls="--")  # SNR = 1
        ax_snr.set(xlabel="t", ylabel="log SNR(t)", title="log-SNR; red: current t")
        ax_snr.grid(alpha=0.3)
        fig.tight_layout()
        _redraw(box.out, fig)

    box.slider.observe(update, names="value")
    update()
    box.children = [box.slider, box.readout, box.out]
    return box


def schedule_explorer(x0, noise=None, generator=None, T=1000):
    """Lesson 02. Pick a schedule name, T, beta_end (linear) and zero-terminal-SNR; see alpha_bar
    and log-SNR against t/T, and the digits ``x0`` (B, 1, H, W) noised at t/T = 0, 0.1, ..., 1.

    Attributes: ``name``, ``T``, ``beta_end``, ``zero_snr`` (controls), ``schedule`` (the current
    Schedule), ``strip`` (the noised images shown), ``readout`` (HTML with alpha_bar at the last step).
    """
    box = W.VBox()
    box.noise = noise if noise is not None else torch.randn((11,) + tuple(x0.shape[1:]), generator=generator)
    box.name = W.Dropdown(options=list(SCHEDULE_NAMES), value="linear", description="schedule")
    box.T = W.IntSlider(value=T, min=10, max=2000, step=10, description="T", continuous_update=False)
    box.beta_end = W.FloatSlider(value=0.02, min=0.005, max=0.05, step=0.005, readout_format=".3f",
                                 description="beta_end", continuous_update=False)
    box.zero_snr = W.Checkbox(value=False, description="zero terminal SNR")
    box.readout = W.HTML()
    box.out = W.Output()

    def update(change=None):
        kwargs = {"beta_end": box.beta_end.value} if box.name.value == "linear" else {}
        box.schedule = s = make_schedule(box.name.value, box.T.value, zero_terminal_snr=box.zero_snr.value, **kwargs)
        box.beta_end.disabled = box.name.value != "linear"
        ts = [round(f * (s.T - 1)) for f in torch.linspace(0, 1, 11).tolist()]
        img = x0[:1].expand(len(ts), *x0.shape[1:])
        box.strip = q_sample(img, torch.tensor(ts), s, noise=box.noise)
        box.readout.value = (f"{s.name}, T = {s.T}: &alpha;&#772; at the last step = {s.alpha_bars[-1].item():.2e} "
                             f"(pure noise needs about 0); steps with log-SNR &lt; -5: "
                             f"{int((s.log_snr < -5).sum())} of {s.T}")
        fig, axes = plt.subplots(1, 3, figsize=(12, 2.8))
        frac = torch.arange(s.T) / s.T
        axes[0].plot(frac, s.alpha_bars)
        axes[0].set(xlabel="t / T", title="alpha_bar_t")
        axes[1].plot(frac, s.log_snr.clamp(min=-20))
        axes[1].set(xlabel="t / T", title="log SNR(t) (clipped at -20)")
        for ax in axes[:2]:
            ax.grid(alpha=0.3)
        plotting.show_strip(box.strip, [f"{t / (s.T - 1):.1f}" for t in ts], ax=axes[2], title="x_t at t/T")
        fig.tight_layout()
        _redraw(box.out, fig)

    for control in (box.name, box.T, box.beta_end, box.zero_snr):
        control.observe(update, names="value")
    update()
    box.children = [W.HBox([box.name, box.T]), W.HBox([box.beta_end, box.zero_snr]), box.readout, box.out]
    return box


def trajectory_scrubber(states, timesteps, x0_hats=None):
    """Lesson 03. Scrub through a recorded reverse trajectory: ``states[k]`` (B, C, H, W) is x_t at
    ``timesteps[k]`` (the last state may be the final x_0, with timestep -1), ``x0_hats[k]`` the
    model's guess of x_0 at that step (optional, shown below).

    Attributes: ``slider`` (the step index), ``t`` (its timestep), ``shown`` (the images shown).
    """
    if len(states) != len(timesteps) or (x0_hats is not None and len(x0_hats) != len(states)):
        raise ValueError(f"need one timestep (and x0_hat) per state: {len(states)} states, "
                         f"{len(timesteps)} timesteps, {len(x0_hats) if x0_hats is not None else 0} x0_hats")
    box = W.VBox()
    box.slider = W.IntSlider(value=0, min=0, max=len(states) - 1, description="step", continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()

    def update(change=None):
        k = box.slider.value
        box.t = int(timesteps[k])
        box.shown = states[k]
        box.readout.value = f"step {k} of {len(states) - 1}: " + (f"x_t at t = {box.t}" if box.t >= 0 else "final sample x_0")
        rows = 2 if x0_hats is not None else 1
        fig, axes = plt.subplots(rows, 1, figsize=(min(len(states[k]), 10) * 0.9, 1.2 * rows + 0.4), squeeze=False)
        plotting.show_images(states[k], nrow=len(states[k]), ax=axes[0, 0], title="x_t")
        if x0_hats is not None:
            plotting.show_images(x0_hats[k], nrow=len(states[k]), ax=axes[1, 0], title="model's guess of x_0")
        fig.tight_layout()
        _redraw(box.out, fig)

    box.slider.observe(update, names="value")
    update()
    box.children = [box.slider, box.readout, box.out]
    return box


def ddim_explorer(model, schedule, shape, generator_seed=0, steps=20, eta=0.0, clip_x0=False, reference_steps=None,
                  threshold=None, device="cpu"):
    """Lesson 04. Sliders for DDIM steps and eta; samples ``shape`` images from the same starting
    noise (``clip_x0`` as in :func:`~course_lib.samplers.ddim_step`) and reports the measured wall-clock time.

    With ``reference_steps``, it also samples once with that many steps (eta = 0) and shows how far the
    current samples are from those (mean absolute pixel difference, clipped to [-1, 1] as displayed), with
    four decimals so that a value just under ``threshold`` never prints as the threshold itself.

    Attributes: ``steps``, ``eta`` (sliders), ``samples`` (the last samples), ``seconds`` (their time),
    ``diff`` (the difference to the reference, with ``reference_steps``).
    ``device``: where the model runs; the noise is drawn on the CPU (the same on every machine) and moved there,
    and the samples come back to the CPU inside the timed region (so that a GPU's asynchronous kernels are counted).
    """
    box = W.VBox()
    box.x_T = torch.randn(shape, generator=torch.Generator().manual_seed(generator_seed)).to(device)
    box.steps = W.IntSlider(value=steps, min=1, max=200, description="steps", continuous_update=False)
    box.eta = W.FloatSlider(value=eta, min=0.0, max=1.0, step=0.1, description="eta", continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()
    reference = None
    if reference_steps is not None:
        with torch.no_grad():
            reference = ddim_sample(model, shape, schedule, steps=reference_steps, x_T=box.x_T, clip_x0=clip_x0).cpu()

    def update(change=None):
        start = time.perf_counter()
        with torch.no_grad():
            box.samples = ddim_sample(model, shape, schedule, steps=box.steps.value, eta=box.eta.value,
                                      generator=torch.Generator().manual_seed(generator_seed + 1), x_T=box.x_T,
                                      clip_x0=clip_x0).cpu()
        box.seconds = time.perf_counter() - start
        text = (f"DDIM, {box.steps.value} steps, eta = {box.eta.value:.1f}: "
                f"{box.seconds:.2f} s for {shape[0]} images (same starting noise every time)")
        if reference is not None:
            box.diff = (box.samples.clamp(-1, 1) - reference.clamp(-1, 1)).abs().mean().item()
            target = f" (target: below {threshold})" if threshold is not None else ""
            text += f"<br>mean |samples - {reference_steps}-step samples| = <b>{box.diff:.4f}</b>{target}"
        box.readout.value = text
        fig, ax = plt.subplots(figsize=(min(shape[0], 10) * 0.9, 1.3))
        plotting.show_images(box.samples, nrow=shape[0], ax=ax)
        _redraw(box.out, fig)

    box.steps.observe(update, names="value")
    box.eta.observe(update, names="value")
    update()
    box.children = [W.HBox([box.steps, box.eta]), box.readout, box.out]
    return box


def langevin_explorer(mixture, n=1000, generator_seed=0, step_size=0.1, n_steps=1000, annealed=False,
                      sigmas=(20.0, 1.0, 10), box=8.0):
    """Lesson 05. Langevin dynamics with exact scores on the 2-D ``mixture`` (a
    :class:`~course_lib.score.GaussianMixture`): a step-size slider (log scale), the number of steps,
    and annealing on or off. ``n`` points start uniform on [-box, box]^2 (Song & Ermon, 2019, Sec. 3.2.2);
    annealed runs spread the same number of steps over the geometric noise levels
    ``sigmas = (sigma_max, sigma_min, levels)`` (``n_steps // levels`` per level, Algorithm 1).

    Attributes: ``step_size``, ``n_steps``, ``annealed`` (controls), ``samples`` (the last samples),
    ``weights`` (measured fraction per component), ``stable`` (every sample finite and within 100 times
    the starting box), ``run_seed`` (the seed of the Langevin noise), ``readout`` (the HTML line),
    ``x_init`` (the fixed starting points).
    """
    from .score import annealed_langevin, geometric_sigmas, langevin, mode_weights

    if mixture.D != 2:
        raise ValueError(f"langevin_explorer draws 2-D densities; this mixture has D = {mixture.D}")
    sigma_max, sigma_min, levels = sigmas
    box_w = W.VBox()
    box_w.x_init = (torch.rand((n, 2), generator=torch.Generator().manual_seed(generator_seed)) * 2 - 1) * box
    box_w.sigmas = geometric_sigmas(sigma_max, sigma_min, levels)
    box_w.run_seed = generator_seed + 1
    box_w.step_size = W.FloatLogSlider(value=step_size, base=10, min=-3, max=1, step=0.05, readout_format=".3g",
                                       description="step size", continuous_update=False)
    box_w.n_steps = W.IntSlider(value=n_steps, min=levels, max=3000, step=levels, description="steps",
                                continuous_update=False)
    box_w.annealed = W.Checkbox(value=annealed, description="annealed")
    box_w.readout = W.HTML()
    box_w.out = W.Output()
    xs = torch.linspace(-box * 1.25, box * 1.25, 121)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1).reshape(-1, 2)  # (121*121, 2)
    density = mixture.log_prob(grid).exp().reshape(121, 121)

    def update(change=None):
        eps, steps = box_w.step_size.value, box_w.n_steps.value
        g = torch.Generator().manual_seed(box_w.run_seed)
        start = time.perf_counter()
        with torch.no_grad():
            if box_w.annealed.value:
                per_level = max(1, steps // len(box_w.sigmas))
                x = annealed_langevin(lambda x, s: mixture.perturbed(s).score(x), box_w.x_init, box_w.sigmas,
                                      eps, per_level, generator=g)
                how = f"annealed, {len(box_w.sigmas)} levels x {per_level} steps"
            else:
                x = langevin(mixture.score, box_w.x_init, eps, steps, generator=g)
                how = f"plain, {steps} steps"
        box_w.seconds = time.perf_counter() - start
        box_w.samples = x
        box_w.stable = bool(torch.isfinite(x).all() and x.abs().max() < 100 * box_w.x_init.abs().max())
        box_w.weights = mode_weights(mixture, x)
        target = ", ".join(f"{w:.2f}" for w in mixture.weights.tolist())
        measured = ", ".join(f"{w:.3f}" for w in box_w.weights.tolist())
        status = "stable" if box_w.stable else "<b style='color:#c00'>DIVERGED</b> (samples blew up)"
        box_w.readout.value = (f"{how}, step size {eps:.3g}: mode weights <b>{measured}</b> "
                               f"(true {target}); {status}; {box_w.seconds:.2f} s")
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        ax.contour(xs, xs, density, levels=6, colors="gray", linewidths=0.7)
        shown = x[torch.isfinite(x).all(dim=1)]
        ax.scatter(shown[:, 0], shown[:, 1], s=3, alpha=0.5, color="tab:blue")
        ax.set(xlim=(-box * 1.25, box * 1.25), ylim=(-box * 1.25, box * 1.25), aspect="equal",
               title=f"{'annealed' if box_w.annealed.value else 'plain'} Langevin: weights {measured}")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        _redraw(box_w.out, fig)

    for control in (box_w.step_size, box_w.n_steps, box_w.annealed):
        control.observe(update, names="value")
    update()
    box_w.children = [W.HBox([box_w.step_size, box_w.n_steps, box_w.annealed]), box_w.readout, box_w.out]
    return box_w


def cfg_explorer(net, schedule, labels, s=1.0, measured=None, steps=20, generator_seed=0, null_class=None,
                 clip_x0=True, s_max=8.0, s_step=0.25, device="cpu"):
    """Lesson 07. A slider over the classifier-free guidance scale s, in the course's convention
    eps_u + s (eps_c - eps_u) (s = 0 unconditional, s = 1 plain conditional; Ho & Salimans' w = s - 1),
    over one fixed noise batch: DDIM-``steps`` (eta = 0) samples of the class-conditional ``net(x, t, y)``
    towards ``labels`` (B,), from the same x_T at every s. The evaluation classifier of
    :mod:`course_lib.metrics` says how many come out as the digit asked for. With ``measured`` (rows with
    ``"s"``, ``"accuracy"`` and ``"spread"``, e.g. ``quality.json["cfg"]``) the measured curves are drawn
    beside the samples, with a marker at the current s.

    Attributes: ``s`` (the slider), ``x_T``, ``labels``, ``n_steps``, ``samples`` (the last samples),
    ``predicted`` (their labels by the evaluation classifier), ``correct`` (how many equal ``labels``),
    ``seconds`` (the sampling time), ``readout``.
    ``device``: where ``net`` runs; the noise is drawn on the CPU (the same on every machine) and moved there
    (``x_T`` lives there), and the samples come back to the CPU for the classifier and the plot.
    """
    from .guidance import classifier_free, ho_w_from_s
    from .metrics import predict_labels

    labels = torch.as_tensor(labels).long()
    box = W.VBox()
    box.labels, box.n_steps = labels, steps
    shape = (len(labels), *getattr(net, "image_shape", (1, 32, 32)))
    box.x_T = torch.randn(shape, generator=torch.Generator().manual_seed(generator_seed)).to(device)
    box.s = W.FloatSlider(value=s, min=0.0, max=s_max, step=s_step, description="s", readout_format=".2f",
                          continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()
    rows = sorted(measured, key=lambda r: r["s"]) if measured else None

    def update(change=None):
        s_now = box.s.value
        start = time.perf_counter()
        with torch.no_grad():
            box.samples = ddim_sample(classifier_free(net, labels.to(device), s_now, null_class), shape, schedule,
                                      steps=steps, x_T=box.x_T, clip_x0=clip_x0).cpu()
        box.seconds = time.perf_counter() - start
        box.predicted = predict_labels(box.samples)
        box.correct = int((box.predicted == labels).sum())
        wrong = [f"{a}&rarr;{b}" for a, b in zip(labels.tolist(), box.predicted.tolist()) if a != b]
        box.readout.value = (f"s = {s_now:.2f} (Ho &amp; Salimans' w = {ho_w_from_s(s_now):.2f}): <b>{box.correct} of "
                             f"{len(labels)}</b> digits classified as asked"
                             + (f" (wrong: {', '.join(wrong)})" if wrong else " (all right)")
                             + f"; DDIM-{steps}, same x_T every time, {box.seconds:.1f} s")
        ncols = 2 if rows else 1
        fig, axes = plt.subplots(1, ncols, figsize=(11 if rows else 7, 2.9), squeeze=False,
                                 gridspec_kw={"width_ratios": [1.5, 1] if rows else [1]})
        plotting.show_images(box.samples.clamp(-1, 1), nrow=min(len(labels), 10), ax=axes[0, 0],
                             title=f"s = {s_now:.2f}: {box.correct}/{len(labels)} as asked")
        if rows:
            ax = axes[0, 1]
            xs = [r["s"] for r in rows]
            ax.plot(xs, [100 * r["accuracy"] for r in rows], "o-", color="tab:blue", label="accuracy (%)")
            ax.set(xlabel="s", ylabel="class accuracy (%)", title="measured curve; red: current s")
            ax2 = ax.twinx()
            ax2.plot(xs, [r["spread"] for r in rows], "s--", color="tab:orange", label="within-class spread")
            ax2.set_ylabel("within-class spread")
            ax.axvline(s_now, color="tab:red")
            ax.plot([s_now], [100 * box.correct / len(labels)], "*", color="tab:red", ms=12, label="this batch")
            handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
            ax.legend(handles=handles, fontsize=7, loc="center right")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        _redraw(box.out, fig)

    box.s.observe(update, names="value")
    update()
    box.children = [box.s, box.readout, box.out]
    return box


def classifier_guidance_explorer(net, classifier, schedule, scales=(0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0),
                                 per_class=2, steps=25, generator_seed=0, value=1.0, clip_x0=True, null_class=None,
                                 image_shape=(1, 32, 32), device="cpu"):
    """Lesson 06. A guidance-scale slider for classifier guidance (eps form, Dhariwal & Nichol, 2021,
    Algorithm 2) of the unconditional mode of ``net`` (its null class) by the noise-aware ``classifier``,
    over one fixed noise batch: ``per_class`` samples of each digit 0..9 (DDIM-``steps``, eta 0).

    The readout gives the class accuracy by the **evaluation** classifier of :mod:`course_lib.metrics`
    (never the guiding one), how many of the ten digits have all their samples right, and the within-class
    spread (:func:`~course_lib.metrics.within_class_spread`, a diversity measure) of the batch.

    Attributes: ``scale`` (the slider), ``labels`` (the asked-for digits), ``x_T`` (the fixed noise),
    ``samples``, ``accuracy``, ``digits_right`` (digits with every sample right), ``all_right``, ``spread``,
    ``seconds`` of the current scale; ``evaluate(s)`` returns (and caches) that dict for any scale.
    ``device``: where ``net`` and ``classifier`` run; the noise is drawn on the CPU (the same on every machine) and
    moved there, and the samples come back to the CPU for the evaluation classifier and the plot.
    """
    from . import metrics
    from .guidance import classifier_guided, unconditional

    if per_class < 2:
        raise ValueError(f"per_class must be >= 2 (the diversity readout needs two samples of a digit), got {per_class}")
    box = W.VBox()
    box.labels = torch.arange(10).repeat(per_class)  # (10 * per_class,): 0..9, 0..9, ...
    shape = (len(box.labels), *image_shape)
    box.x_T = torch.randn(shape, generator=torch.Generator().manual_seed(generator_seed)).to(device)
    box.scale = W.SelectionSlider(options=[float(s) for s in scales], value=float(value), description="scale s",
                                  continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()
    box.cache = {}
    base = unconditional(net, null_class)

    def evaluate(s):
        s = float(s)
        if s not in box.cache:
            start = time.perf_counter()
            model = classifier_guided(base, classifier, box.labels.to(device), s, schedule)
            samples = ddim_sample(model, shape, schedule, steps=steps, x_T=box.x_T, clip_x0=clip_x0).cpu()
            seconds = time.perf_counter() - start
            right = metrics.predict_labels(samples) == box.labels  # (N,)
            digits_right = int(right.reshape(per_class, 10).all(0).sum())
            box.cache[s] = {"samples": samples, "accuracy": right.float().mean().item(), "digits_right": digits_right,
                            "all_right": bool(right.all()), "spread": metrics.within_class_spread(samples, box.labels),
                            "seconds": seconds}
        return box.cache[s]

    box.evaluate = evaluate

    def update(change=None):
        r = evaluate(box.scale.value)
        for key, v in r.items():
            setattr(box, key, v)
        box.readout.value = (f"s = {box.scale.value:g}, DDIM-{steps}, {len(box.labels)} samples ({per_class} per digit, "
                             f"same noise at every s): accuracy <b>{r['accuracy']:.0%}</b> (evaluation classifier); "
                             f"digits with every sample right: <b>{r['digits_right']}/10</b>; "
                             f"within-class spread {r['spread']:.1f}; {r['seconds']:.1f} s")
        fig, ax = plt.subplots(figsize=(9.0, 0.95 * per_class))
        plotting.show_images(r["samples"], nrow=10, ax=ax)
        ax.set_title(f"classifier guidance, s = {box.scale.value:g} (columns: digits 0-9)", fontsize=9)
        _redraw(box.out, fig)

    box.scale.observe(update, names="value")
    update()
    box.children = [box.scale, box.readout, box.out]
    return box


def prompt_explorer(pipe, prompt="a thick seven slanted left", w=None, steps=25, n=4, generator_seed=0, w_max=10.0,
                    w_step=0.5):
    """Lesson 08. A prompt box and a guidance slider for the text-to-image model ``pipe``
    (``pretrained.load("mnist-latent")``): ``n`` samples of the prompt, DDIM-``steps`` in latent space with
    classifier-free guidance against the null prompt at scale s (the course's eps_null + s (eps_prompt - eps_null)),
    from the same starting noise for every prompt and s, each beside its attention map per token (the share of each
    pixel's attention that goes to the token, averaged over heads, attention blocks, steps, conditional half; each map
    drawn on its own colour scale, the token's mean share written under its name).

    The readout reads each sample as the evaluation classifier of :mod:`course_lib.metrics` sees it, with its ink and
    slant placed in the thirds of real digits of that class (:func:`course_lib.metrics.attribute_thresholds`). A word
    outside the vocabulary shows the ``ValueError``'s message (which lists the vocabulary), not a traceback.

    Attributes: ``prompt`` (the text box), ``w`` (the slider, s), ``samples`` (n, 1, 32, 32), ``maps`` (n, L, 32, 32),
    ``tokens`` (the token strings the maps belong to, ``<s>`` first), ``predicted`` (labels), ``ink``, ``slant``,
    ``thickness`` / ``slant_class`` (0, 1, 2: the third of real digits of the predicted class), ``error`` (the message of
    the last bad prompt, or None), ``seconds``, ``readout``, ``out``.
    """
    import html

    from . import latent
    from .metrics import attribute_thresholds, predict_labels

    w = latent.DEFAULT_W if w is None else w
    box = W.VBox()
    box.n, box.n_steps, box.generator_seed = n, steps, generator_seed
    box.prompt = W.Text(value=prompt, description="prompt", continuous_update=False, layout=W.Layout(width="420px"))
    box.w = W.FloatSlider(value=w, min=0.0, max=w_max, step=w_step, description="s", readout_format=".1f",
                          continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()
    box.error = None
    thresholds = attribute_thresholds()
    thick_names, slant_names = ("thin", "middle", "thick"), ("left", "upright", "right")

    def update(change=None):
        text = box.prompt.value
        try:
            latent.tokenize(text)  # the vocabulary check, before any sampling
        except ValueError as err:
            box.error = str(err)
            box.readout.value = f"<b style='color:#c00'>ValueError:</b> {html.escape(str(err))}"
            # the message replaces the output area's figure (assigned, not printed: the same with or without a kernel)
            box.out.outputs = ({"output_type": "stream", "name": "stdout", "text": f"ValueError: {err}\n"},)
            return
        box.error = None
        start = time.perf_counter()
        samples, maps = latent.text_to_image(pipe, [text] * n, steps=steps, w=box.w.value,
                                             generator=torch.Generator().manual_seed(generator_seed),
                                             return_attention=True)
        box.seconds = time.perf_counter() - start
        box.samples, box.tokens = samples.cpu(), latent.token_strings(text)
        box.maps = maps.cpu()[:, :len(box.tokens)]  # (n, L, 32, 32): the real tokens only (padding gets weight 0)
        box.predicted = predict_labels(box.samples)
        box.ink, box.slant = latent.ink(box.samples), latent.slant(box.samples)
        ink_b, slant_b = thresholds["ink"][box.predicted], thresholds["slant"][box.predicted]  # (n, 2) each
        box.thickness = ((box.ink.double() > ink_b[:, 0]).long() + (box.ink.double() > ink_b[:, 1]).long()).tolist()
        box.slant_class = ((box.slant.double() > slant_b[:, 0]).long() + (box.slant.double() > slant_b[:, 1]).long()).tolist()
        reads = [f"{c} ({thick_names[th]}, {slant_names[sl]})"
                 for c, th, sl in zip(box.predicted.tolist(), box.thickness, box.slant_class)]
        box.readout.value = (f"s = {box.w.value:.1f}, DDIM-{steps}, {n} samples (same noise for every prompt and s), "
                             f"{box.seconds:.1f} s; tokens: {html.escape(' | '.join(box.tokens))}<br>"
                             f"read by the evaluation classifier (thickness and slant: the third of real digits of that "
                             f"class): <b>{', '.join(reads)}</b><br>attention maps: where each token is attended, each "
                             f"map on its own scale (bright = more), its mean share under the token; cyan: the digit")
        cols = 1 + len(box.tokens)
        fig, axes = plt.subplots(n, cols, figsize=(1.15 * cols + 0.3, 1.2 * n + 0.5), squeeze=False)
        for i in range(n):
            axes[i, 0].imshow(plotting.to_display(box.samples[i:i + 1])[0], cmap="gray", vmin=0, vmax=1)
            axes[i, 0].set_ylabel(reads[i], fontsize=7)
            for j, token in enumerate(box.tokens):
                ax = axes[i, j + 1]
                ax.imshow(box.maps[i, j].numpy(), cmap="magma")  # each map on its own scale: where the token is attended
                ax.contour(plotting.to_display(box.samples[i:i + 1])[0], levels=[0.5], colors="cyan", linewidths=0.5)
                if i == 0:
                    ax.set_title(f"{token}\n{box.maps[:, j].mean().item():.0%}", fontsize=8)
        axes[0, 0].set_title("sample", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"\"{text}\"", fontsize=9)
        fig.tight_layout()
        _redraw(box.out, fig)

    box.prompt.observe(update, names="value")
    box.w.observe(update, names="value")
    update()
    box.children = [W.HBox([box.prompt, box.w]), box.readout, box.out]
    return box


# ---- lesson 09: inpainting (a mask to draw) and super-resolution (factor and guidance)

#: the mask explorer's presets; "right columns" and "box" take the size slider (16 and 14: the table's masks)
MASK_PRESETS = ("right columns", "box", "lines", "random pixels", "none")
BRUSH_GRID = 8  # the brush: an 8 x 8 grid of toggles, each a 4 x 4 block of a 32 x 32 digit


def preset_mask(name, size_px=16, image_size=32):
    """The mask explorer's preset masks, ``keep_mask`` (1, 1, H, W) floats, 1 = known: ``"right columns"`` (the rightmost
    ``size_px`` columns unknown), ``"box"`` (a centred square of side ``size_px`` unknown), ``"lines"`` and ``"random
    pixels"`` (:func:`course_lib.metrics.inpainting_mask`, the table's), ``"none"`` (all known: draw with the brush)."""
    from .metrics import inpainting_mask

    if name not in MASK_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(map(repr, MASK_PRESETS))}")
    if not isinstance(size_px, int) or not 0 <= size_px <= image_size:
        raise ValueError(f"size_px must be an int in 0..{image_size}, got {size_px!r}")
    keep = torch.ones(1, 1, image_size, image_size)
    if name == "right columns" and size_px > 0:
        keep[..., image_size - size_px:] = 0
    elif name == "box" and size_px > 0:
        lo = (image_size - size_px) // 2
        keep[..., lo:lo + size_px, lo:lo + size_px] = 0
    elif name in ("lines", "random pixels"):
        keep = inpainting_mask(name, image_size)
    return keep


def inpaint_digit(model, schedule, x0, keep_mask, x_T, steps, method="replace", seed=0, clip_x0=True, jump_length=5,
                  jump_n_sample=3):
    """What the mask explorer runs: ``len(x_T)`` completions of the one digit ``x0`` (1, 1, H, W) under ``keep_mask``,
    from the starting noise ``x_T`` and a fresh ``torch.Generator().manual_seed(seed)`` (so the same mask always gives
    the same completions). RePaint uses ``jump_length`` (at most ``steps``) and ``jump_n_sample`` on the grid of ``steps``."""
    from .inpainting import inpaint

    x_known = x0.to(x_T.device).expand(len(x_T), *x0.shape[1:])  # (S, 1, H, W): the digit, once per sample
    options = {"jump_length": min(jump_length, steps), "jump_n_sample": jump_n_sample} if method == "repaint" else {}
    with torch.no_grad():
        return inpaint(model, x_known, keep_mask.to(x_T.device), schedule, steps=steps, method=method, x_T=x_T,
                       generator=torch.Generator().manual_seed(seed), clip_x0=clip_x0, **options)


def masked_view(x, keep):
    """The digit as the sampler sees it: known pixels, the unknown ones in mid-grey with a red tint (RGB, (B, 3, H, W))."""
    grey = ((x + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1).clone()  # (B, 3, H, W) in [0, 1]
    hole = (keep < 0.5).expand_as(grey)
    tint = torch.tensor([0.85, 0.35, 0.35]).view(1, 3, 1, 1).expand_as(grey)
    return torch.where(hole, tint, grey) * 2 - 1  # back to [-1, 1] for plotting.show_images


def mask_explorer(model, schedule, images, labels, index=0, preset="right columns", size_px=16, method="replace",
                  steps=25, samples=4, generator_seed=0, clip_x0=True, jump_length=5, jump_n_sample=3, device="cpu"):
    """Lesson 09. Draw a mask on a digit, or pick a preset, and fill in the rest with the unconditional ``model(x_t, t)``
    (:func:`~course_lib.inpainting.inpaint`): ``samples`` completions of the digit ``images[index]`` from one fixed
    starting noise, each read by the evaluation classifier of :mod:`course_lib.metrics` against ``labels[index]``.

    Controls: ``digit`` (the index), ``preset`` (:data:`MASK_PRESETS`), ``size_px`` (the width of "right columns", the
    side of "box"), ``method`` ("clean", "replace", "repaint"), the brush ``cells`` (an 8 x 8 grid of toggles, row by
    row; a toggle that is down masks its 4 x 4 block, on top of the preset) and the ``run`` button. Changing the digit,
    preset, size or method inpaints at once; the brush only redraws the mask, and ``run`` (``.click()``) inpaints.

    Attributes: ``keep_mask`` (1, 1, 32, 32), 1 = known; ``masked_fraction``; ``x_T`` (the fixed noise, drawn on the
    CPU from ``generator_seed``, on ``device``); ``completions``; ``predicted`` (their labels); ``label``; ``kept``
    (how many completions keep the original's label); ``seconds``; ``n_steps``; ``readout``. ``stale`` is True while
    the brush has changed the mask since the last run. ``run_now()`` inpaints from code.
    """
    from .metrics import predict_labels

    images, labels = images.cpu(), torch.as_tensor(labels).cpu()
    box = W.VBox()
    box.model, box.schedule, box.device, box.n_steps = model, schedule, device, steps
    box.x_T = torch.randn((samples, *images.shape[1:]), generator=torch.Generator().manual_seed(generator_seed)).to(device)
    box.seed = generator_seed + 1
    box.digit = W.IntSlider(value=index, min=0, max=len(images) - 1, description="digit", continuous_update=False)
    box.preset = W.Dropdown(options=list(MASK_PRESETS), value=preset, description="mask")
    box.size_px = W.IntSlider(value=size_px, min=0, max=images.shape[-1], step=2, description="size (px)",
                              continuous_update=False)
    box.method = W.Dropdown(options=["clean", "replace", "repaint"], value=method, description="method")
    box.run = W.Button(description="inpaint", button_style="primary")
    box.cells = [W.ToggleButton(value=False, layout=W.Layout(width="24px", height="20px", padding="0px"))
                 for _ in range(BRUSH_GRID * BRUSH_GRID)]
    box.readout = W.HTML()
    box.out = W.Output()
    box.stale = False
    block = images.shape[-1] // BRUSH_GRID

    def current_mask():
        keep = preset_mask(box.preset.value, box.size_px.value, images.shape[-1])
        drawn = torch.tensor([c.value for c in box.cells], dtype=torch.float).view(1, 1, BRUSH_GRID, BRUSH_GRID)
        drawn = drawn.repeat_interleave(block, -1).repeat_interleave(block, -2)  # (1, 1, 32, 32)
        return keep * (1 - drawn)

    def draw(x0):
        keep = box.keep_mask
        fig, axes = plt.subplots(1, 3, figsize=(9.5, 2.0), gridspec_kw={"width_ratios": [1, 1, max(len(box.x_T), 1)]})
        plotting.show_images(x0, nrow=1, ax=axes[0], title=f"original ({box.label})")
        plotting.show_images(masked_view(x0, keep), nrow=1, ax=axes[1], title=f"masked {box.masked_fraction:.0%}")
        if box.stale or box.completions is None:
            axes[2].axis("off")
            axes[2].set_title("mask changed: press 'inpaint'", fontsize=9)
        else:
            plotting.show_images(box.completions.clamp(-1, 1), nrow=len(box.completions), ax=axes[2],
                                 labels=[str(p) for p in box.predicted.tolist()],
                                 title=f"{box.method.value}: {box.kept} of {len(box.completions)} read as {box.label}")
        fig.tight_layout()
        _redraw(box.out, fig)

    def refresh_mask(change=None):
        box.keep_mask = current_mask()
        box.masked_fraction = 1 - box.keep_mask.mean().item()
        box.size_px.disabled = box.preset.value not in ("right columns", "box")
        box.label = int(labels[box.digit.value])

    def run_now(change=None):
        refresh_mask()
        x0 = images[box.digit.value:box.digit.value + 1]
        start = time.perf_counter()
        box.completions = inpaint_digit(model, schedule, x0, box.keep_mask, box.x_T, steps, box.method.value, box.seed,
                                        clip_x0, jump_length, jump_n_sample).cpu()
        box.seconds = time.perf_counter() - start
        box.predicted = predict_labels(box.completions)
        box.kept = int((box.predicted == box.label).sum())
        box.stale = False
        box.readout.value = (f"digit {box.digit.value} (a {box.label}), mask '{box.preset.value}'"
                             + (f" {box.size_px.value} px" if not box.size_px.disabled else "")
                             + f" + {sum(c.value for c in box.cells)} brush blocks: <b>{box.masked_fraction:.1%}</b> "
                             f"of the pixels unknown; {box.method.value}, {steps} steps: the completions read as "
                             f"{box.predicted.tolist()}, <b>{box.kept} of {len(box.completions)}</b> keep the {box.label}; "
                             f"{box.seconds:.1f} s")
        draw(x0)

    def brushed(change=None):
        refresh_mask()
        box.stale = True
        box.readout.value = (f"{box.masked_fraction:.1%} of the pixels unknown (brush: "
                             f"{sum(c.value for c in box.cells)} blocks): press <b>inpaint</b>")
        draw(images[box.digit.value:box.digit.value + 1])

    box.completions = None
    box.run_now = run_now
    for control in (box.digit, box.preset, box.size_px, box.method):
        control.observe(run_now, names="value")
    for cell in box.cells:
        cell.observe(brushed, names="value")
    box.run.on_click(lambda button: run_now())
    run_now()
    grid = W.VBox([W.HBox(box.cells[r * BRUSH_GRID:(r + 1) * BRUSH_GRID]) for r in range(BRUSH_GRID)])
    brush = W.VBox([W.HTML("brush: a toggle masks its 4x4 block"), grid])
    box.children = [W.HBox([W.VBox([box.digit, box.preset, box.size_px, box.method, box.run]), brush]), box.readout,
                    box.out]
    return box


def superres_explorer(pipe, images, labels, index=0, factor=4, w=None, samples=4, steps=25, generator_seed=0,
                      w_max=5.0, device="cpu"):
    """Lesson 09. Super-resolve a held-out digit with the shipped ``mnist-sr`` (``pipe``): pick the digit, the downscale
    factor (2, 4 or 8, :data:`course_lib.superres.FACTORS`) and the guidance ``w`` on the low-res image; see the
    original, its block-averaged low-res version, bicubic upsampling and ``samples`` diffusion samples (DDIM-``steps``,
    the same starting noise every time), with PSNR, consistency (MSE of downsample(SR) against the input) and the class
    each one is read as.

    Attributes: ``digit``, ``factor``, ``w`` (controls); ``x_lr``, ``bicubic``, ``sr`` (the samples), ``predicted``
    (labels of the SR samples), ``label``, ``psnr_sr``/``psnr_bicubic`` (dB, mean over the samples),
    ``consistency_sr``/``consistency_bicubic``, ``sharpness_sr``/``sharpness_bicubic``/``sharpness_real``, ``diversity``
    (per-pixel std across the samples), ``seconds``, ``readout``.
    """
    from . import metrics
    from .superres import DEFAULT_W, FACTORS, consistency_mse, downsample, upscale, upsample

    images, labels = images.cpu(), torch.as_tensor(labels).cpu()
    w = DEFAULT_W if w is None else w
    box = W.VBox()
    box.x_T = torch.randn((samples, *images.shape[1:]), generator=torch.Generator().manual_seed(generator_seed)).to(device)
    box.digit = W.IntSlider(value=index, min=0, max=len(images) - 1, description="digit", continuous_update=False)
    box.factor = W.Dropdown(options=list(FACTORS), value=factor, description="factor")
    box.w = W.FloatSlider(value=w, min=0.0, max=w_max, step=0.5, description="w", readout_format=".1f",
                          continuous_update=False)
    box.readout = W.HTML()
    box.out = W.Output()

    def update(change=None):
        x0 = images[box.digit.value:box.digit.value + 1]
        box.label = int(labels[box.digit.value])
        f = box.factor.value
        box.x_lr = downsample(x0, f)  # (1, 1, 32/f, 32/f)
        box.bicubic = upsample(box.x_lr).clamp(-1, 1)
        x_lr = box.x_lr.to(device).expand(samples, -1, -1, -1)  # (S, 1, 32/f, 32/f): one input, S samples
        start = time.perf_counter()
        with torch.no_grad():
            box.sr = upscale(pipe, x_lr, steps=steps, w=box.w.value, x_T=box.x_T).cpu()
        box.seconds = time.perf_counter() - start
        box.predicted = metrics.predict_labels(box.sr)
        box.psnr_sr = metrics.psnr(box.sr, x0.expand_as(box.sr)).mean().item()
        box.psnr_bicubic = metrics.psnr(box.bicubic, x0).item()
        box.consistency_sr = consistency_mse(box.sr, box.x_lr)
        box.consistency_bicubic = consistency_mse(box.bicubic, box.x_lr)
        box.sharpness_sr = metrics.sharpness(box.sr).mean().item()
        box.sharpness_bicubic = metrics.sharpness(box.bicubic).item()
        box.sharpness_real = metrics.sharpness(x0).item()
        box.diversity = box.sr.std(0).mean().item() if samples > 1 else 0.0
        right = int((box.predicted == box.label).sum())
        box.readout.value = (
            f"a {box.label}, x{f} ({32 // f}x{32 // f} -> 32x32), w = {box.w.value:.1f}: "
            f"SR read as {box.predicted.tolist()} (<b>{right} of {samples}</b> right), bicubic as "
            f"{metrics.predict_labels(box.bicubic).item()}<br>PSNR bicubic {box.psnr_bicubic:.1f} dB, SR {box.psnr_sr:.1f} dB; "
            f"consistency (MSE of the downsampled result vs the input) bicubic {box.consistency_bicubic:.4f}, "
            f"SR {box.consistency_sr:.4f}; sharpness real {box.sharpness_real:.3f}, bicubic {box.sharpness_bicubic:.3f}, "
            f"SR {box.sharpness_sr:.3f}; diversity {box.diversity:.3f}; {box.seconds:.1f} s")
        low = box.x_lr.repeat_interleave(f, -1).repeat_interleave(f, -2)  # shown as blocks, at 32x32
        row = torch.cat([x0, low, box.bicubic, box.sr])
        fig, ax = plt.subplots(figsize=(1.0 * len(row) + 0.5, 1.45))
        plotting.show_images(row, nrow=len(row), ax=ax, labels=["original", f"input x{f}", "bicubic"]
                             + [f"SR: {p}" for p in box.predicted.tolist()])
        _redraw(box.out, fig)

    for control in (box.digit, box.factor, box.w):
        control.observe(update, names="value")
    update()
    box.children = [W.HBox([box.digit, box.factor, box.w]), box.readout, box.out]
    return box
