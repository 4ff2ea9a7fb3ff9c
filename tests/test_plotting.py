"""course_lib.plotting: the loss-curve helper and row labels of image grids (issue 13 item 19).
Headless: run with MPLBACKEND=Agg."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import plotting, train  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_losses_draws_raw_and_smoothed_on_a_log_axis():
    losses = (torch.linspace(1, 0.05, 200) + 0.01 * torch.rand(200, generator=torch.Generator().manual_seed(0))).tolist()
    ax = plotting.plot_losses(losses, smooth=20)
    raw, avg = ax.get_lines()
    assert len(raw.get_xdata()) == 200 and len(avg.get_xdata()) == 181
    assert avg.get_xdata()[0] == 19  # each average sits at the last step of its window
    assert avg.get_ydata()[0] == pytest.approx(sum(losses[:20]) / 20)
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "training step"


def test_plot_losses_takes_a_train_result_and_an_axes():
    _, ax = plt.subplots()
    result = train.TrainResult(model=None, ema=None, losses=[0.5, 0.4, 0.3])
    assert plotting.plot_losses(result, smooth=None, ax=ax, logy=False) is ax
    assert len(ax.get_lines()) == 1 and ax.get_yscale() == "linear"
    assert len(plotting.plot_losses([1.0, 0.5], smooth=50).get_lines()) == 2  # window capped at 2 steps


@pytest.mark.parametrize("bad", [-1, 2.5, "50"])
def test_plot_losses_refuses_a_bad_window(bad):
    with pytest.raises(ValueError, match="smooth"):
        plotting.plot_losses([1.0, 0.5], smooth=bad)


def test_plot_losses_refuses_an_empty_history():
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_losses([])


def test_show_images_row_labels():
    images = torch.zeros(6, 1, 8, 8)
    ax = plotting.show_images(images, nrow=3, row_labels=["DDPM", "DDIM"], labels=["a", "b", "c"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["DDPM", "DDIM"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert list(ax.get_yticks()) == [2 + 10 * r + 10 / 2 - 1 for r in range(2)]  # row centres (8 px + 2 padding)


def test_show_images_row_labels_must_match_the_rows():
    with pytest.raises(ValueError, match="one label per row.*2 rows, got 3"):
        plotting.show_images(torch.zeros(6, 1, 8, 8), nrow=3, row_labels=["a", "b", "c"])
