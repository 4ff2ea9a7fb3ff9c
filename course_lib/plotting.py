"""Pictures: image grids, curves over t, trajectory strips, 2-D point clouds.

Every function draws into a matplotlib Axes (a new figure if none is given) and returns it, so
notebooks can compose figures and widgets can redraw in place.
"""

import matplotlib.pyplot as plt
import torch


def to_display(images):
    """(B, C, H, W) in [-1, 1] -> (B, H, W) or (B, H, W, C) numpy in [0, 1] for imshow.

    Values outside [-1, 1] (noisy x_t) are clipped for display only.
    """
    x = torch.as_tensor(images).detach().float().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    x = ((x + 1) / 2).clamp(0, 1)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def image_grid(images, nrow=8, padding=2):
    """Tile (B, C, H, W) images into one (H', W') or (H', W', C) array in [0, 1], row by row."""
    x = to_display(images)
    B, H, W = x.shape[:3]
    ncol = min(nrow, B)
    rows = (B + ncol - 1) // ncol
    shape = (rows * (H + padding) + padding, ncol * (W + padding) + padding) + x.shape[3:]
    grid = torch.ones(shape).numpy()  # white separators
    for k in range(B):
        r, c = divmod(k, ncol)
        grid[padding + r * (H + padding): padding + r * (H + padding) + H,
             padding + c * (W + padding): padding + c * (W + padding) + W] = x[k]
    return grid


def show_images(images, nrow=8, title=None, ax=None, labels=None, row_labels=None):
    """Show a grid of images in [-1, 1], ``nrow`` per row.

    ``labels``: one string per column, written below; ``row_labels``: one string per row, written
    on the left (e.g. the class, the sampler or the number of steps of each row).
    """
    ncol = min(nrow, len(images))
    rows = (len(images) + ncol - 1) // ncol
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels needs one label per row: {len(images)} images at {ncol} per row make "
                         f"{rows} rows, got {len(row_labels)} labels")
    if ax is None:
        width = min(1.0 * ncol, 12) + (0.8 if row_labels is not None else 0)
        _, ax = plt.subplots(figsize=(width, 1.0 * rows + (0.4 if title else 0)))
    ax.imshow(image_grid(images, nrow), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    H, W = images.shape[-2] + 2, images.shape[-1] + 2  # one tile plus image_grid's padding of 2
    if labels is not None:
        ax.set_xticks([2 + W * i + W / 2 - 1 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=8)
    if row_labels is not None:
        ax.set_yticks([2 + H * r + H / 2 - 1 for r in range(rows)])
        ax.set_yticklabels(row_labels, fontsize=8)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title)
    return ax


def show_strip(images, labels, title=None, ax=None):
    """One row of images with a label under each, e.g. x_t at several t, or a sampling trajectory."""
    return show_images(images, nrow=len(images), title=title, ax=ax, labels=labels)


def plot_curves(curves, xlabel="t", ylabel=None, title=None, ax=None, logy=False, marker=None):
    """Plot ``{label: y}`` (or ``{label: (x, y)}``) curves on one Axes with a legend."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for label, values in curves.items():
        x, y = values if isinstance(values, tuple) else (range(len(values)), values)
        ax.plot(list(x), torch.as_tensor(y).detach().cpu().tolist(), label=label, marker=marker)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_losses(losses, smooth=50, ax=None, title="training loss", logy=True):
    """Plot a training-loss curve: every step faintly, and its moving average over ``smooth`` steps.

    ``losses``: a list or tensor of per-step losses, or a :class:`~course_lib.train.TrainResult`.
    ``smooth``: window of the moving average (capped at the number of steps); 0 or None for none.
    The y axis is logarithmic by default: the loss falls over orders of magnitude early on and
    then creeps, and a log axis shows both phases.
    """
    y = torch.as_tensor(getattr(losses, "losses", losses), dtype=torch.float64).detach().cpu().flatten()
    if len(y) == 0:
        raise ValueError("no losses to plot: got an empty sequence")
    if smooth is not None and (isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0):
        raise ValueError(f"smooth is a window length in steps (an integer >= 0, or None), got {smooth!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(y.tolist(), alpha=0.3 if smooth else 1.0, label="per step")
    window = min(smooth or 0, len(y))
    if window > 1:
        avg = y.unfold(0, window, 1).mean(1)  # (steps - window + 1,): the mean of each full window
        ax.plot(range(window - 1, len(y)), avg.tolist(), label=f"moving average ({window})")
        ax.legend()
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    return ax


def plot_points(points, ax=None, title=None, s=3, alpha=0.5, label=None, lim=2.5):
    """Scatter (N, 2) points with equal axes, e.g. a 2-D toy data set or its samples."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.5, 3.5))
    p = torch.as_tensor(points).detach().cpu()
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=alpha, label=label)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax
