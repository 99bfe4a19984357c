"""The k-means baseline: faiss recovers planted clusters; baseline_kmeans.py end to end."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import save_dino, save_released, small_model
from scipy.optimize import linear_sum_assignment

import baseline_kmeans
import eval as eval_cli
from data.synthetic import write_synthetic_cocostuff
from modules.kmeans import KMeansSegmenter, fit_kmeans


def hungarian_accuracy(truth, predicted, k):
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return counts[rows, cols].sum() / counts.sum()


def test_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(7)
    k, dim, per = 8, 32, 250
    centres = rng.standard_normal((k, dim))
    truth = np.repeat(np.arange(k), per)
    points = centres[truth] + 0.35 * rng.standard_normal((k * per, dim))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    centroids, inertia = fit_kmeans(points, k, iterations=30, restarts=3, seed=0, use_gpu=False)
    assert centroids.shape == (k, dim) and np.isfinite(inertia) and inertia > 0
    cosine = torch.from_numpy(points) @ F.normalize(centroids, dim=1).T  # (N, K)
    assert hungarian_accuracy(truth, cosine.argmax(dim=1).numpy(), k) > 0.98
    again, inertia_again = fit_kmeans(points, k, iterations=30, restarts=3, seed=0, use_gpu=False)
    assert torch.equal(centroids, again) and inertia == inertia_again  # fixed seed, same answer
    with pytest.raises(ValueError, match="num-samples"):
        fit_kmeans(points[:5], k)


def test_segmenter_logits_are_scaled_cosine_similarities():
    class Constant(nn.Module):
        patch_size = 16
        embed_dim = 2

        def forward(self, images):
            return torch.tensor([3.0, 4.0])[None, :, None, None].expand(images.shape[0], 2, 2, 2)

    model = KMeansSegmenter(Constant(), torch.tensor([[2.0, 0.0], [0.0, 5.0]]), logit_scale=2.0)
    _, normed, logits = model(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 2, 2, 2) and model.num_classes == 2 and model.patch_size == 16
    assert torch.allclose(logits[0, :, 0, 0], torch.tensor([1.2, 1.6]))  # 2 * (0.6, 0.8)
    assert torch.allclose(normed.norm(dim=1), torch.ones(1, 2, 2))


class ColourBackbone(nn.Module):
    """Patch features from colour statistics: a stand-in backbone whose clusters mean something
    on the synthetic scenes (stuff bands and things are painted in distinct colours)."""

    patch_size = 16
    embed_dim = 6

    def forward(self, images):
        mean = F.avg_pool2d(images, 16)  # (B, 3, h, w)
        return torch.cat((mean, F.avg_pool2d(images**2, 16) - mean**2), dim=1)  # (B, 6, h, w)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=12, num_val=4, sizes=((320, 256), (256, 320), (288, 288)))
    return root


def run_baseline(tmp_path, data_root, *flags):
    out = tmp_path / "kmeans.json"
    argv = [
        "--data-root",
        str(data_root),
        "--device",
        "cpu",
        "--num-samples",
        "3000",
        "--output-json",
        str(out),
        *flags,
    ]
    assert baseline_kmeans.main(argv) == 0
    return json.loads(out.read_text())


def test_baseline_clusters_synthetic_scenes(tmp_path, data_root, monkeypatch):
    monkeypatch.setattr(baseline_kmeans, "build_backbone", lambda name, weights_file=None: ColourBackbone())
    result = run_baseline(tmp_path, data_root, "--seed", "3")
    assert result["method"] == "kmeans" and result["backbone"] == "dino_vits16" and result["protocol"] == "center320"
    assert result["kmeans"]["num_clusters"] == 27 and result["kmeans"]["num_samples"] == 3000
    # Colour clusters recover the painted regions well beyond chance (one class covers at most ~40%).
    assert result["acc"] > 60
    again = run_baseline(tmp_path, data_root, "--seed", "3")
    assert again["confusion"] == result["confusion"]


def test_baseline_json_has_eval_fields_and_runs_with_flip_and_crf(tmp_path, data_root):
    dino = save_dino(small_model(), tmp_path / "dino_small.pth")
    result = run_baseline(
        tmp_path,
        data_root,
        "--backbone-weights",
        str(dino),
        "--flip",
        "--crf",
        "--crf-workers",
        "0",
        "--num-workers",
        "0",
        "--limit",
        "2",
        "--iterations",
        "10",
        "--restarts",
        "1",
    )
    assert result["protocol_settings"]["flip"] is True and result["protocol_settings"]["crf"] is True
    assert result["num_images"] == 2 and np.array(result["confusion"]).shape == (27, 27)
    eval_out = tmp_path / "eval.json"
    checkpoint = save_released(small_model(), tmp_path / "small.pth")
    assert (
        eval_cli.main(
            [
                "--data-root",
                str(data_root),
                "--checkpoint",
                str(checkpoint),
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--limit",
                "1",
                "--protocol",
                "center320",
                "--output-json",
                str(eval_out),
            ]
        )
        == 0
    )
    assert set(json.loads(eval_out.read_text())) - {"backbone"} <= set(result)


def test_baseline_bad_options_are_clear(tmp_path, data_root, capsys):
    with pytest.raises(SystemExit):
        baseline_kmeans.main(["--data-root", str(data_root), "--backbone", "resnet50"])
    assert "--backbone: invalid choice: 'resnet50'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        baseline_kmeans.main(["--data-root", str(data_root), "--dataset", "cityscapes", "--device", "cpu"])
    assert "--dataset: invalid choice: 'cityscapes'" in capsys.readouterr().err
    missing = tmp_path / "missing.pth"
    assert (
        baseline_kmeans.main(["--data-root", str(data_root), "--backbone-weights", str(missing), "--device", "cpu"])
        == 2
    )
    assert str(missing) in capsys.readouterr().err.strip().splitlines()[-1]
