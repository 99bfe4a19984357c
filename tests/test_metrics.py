"""Metrics on hand-computed confusion matrices."""

import numpy as np
import pytest
import torch

from engine.metrics import confusion_matrix, hungarian_match, segmentation_metrics


def test_confusion_ignores_255_and_counts_gt_rows():
    label = torch.tensor([[0, 0, 1, 255], [2, 2, 255, 1]])
    pred = torch.tensor([[1, 1, 0, 2], [2, 0, 0, 0]])
    expected = np.array([[0, 2, 0], [2, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, label, 3).numpy(), expected)


def test_confusion_rejects_bad_clusters_and_shapes():
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(4), 3)


def test_hungarian_recovers_permutation():
    confusion = np.array([[0, 9, 1], [8, 0, 0], [1, 0, 7]])
    np.testing.assert_array_equal(hungarian_match(confusion), [1, 0, 2])  # cluster k -> class


def test_metrics_class_never_predicted_and_cluster_never_used():
    # Class 2 is present (4 px) but its matched cluster is never used; class 3 is absent and its
    # cluster never used either, so its IoU is NaN and left out of the mean.
    confusion = np.array(
        [
            [6, 0, 0, 0],
            [2, 5, 0, 0],
            [1, 3, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    result = segmentation_metrics(confusion)
    np.testing.assert_array_equal(result["cluster_to_class"], [0, 1, 2, 3])
    iou = result["iou"]
    np.testing.assert_allclose(iou[:3], [100 * 6 / 9, 100 * 5 / 10, 0.0])
    assert np.isnan(iou[3])
    assert result["miou"] == pytest.approx(100 * (6 / 9 + 5 / 10 + 0) / 3)
    assert result["acc"] == pytest.approx(100 * 11 / 17)
    np.testing.assert_allclose(result["class_acc"][:3], [100.0, 100 * 5 / 7, 0.0])


def test_metrics_after_permuted_matching_equal_original_formula():
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(27, 27))
    result = segmentation_metrics(confusion)
    # The original: move row i to row col_ind[i], then diag-based IoU.
    from scipy.optimize import linear_sum_assignment

    _, col = linear_sum_assignment(confusion, maximize=True)
    moved = np.zeros_like(confusion)
    for i in range(27):
        moved[col[i]] = confusion[i]
    tp = np.diag(moved)
    iou = tp / (moved.sum(0) + moved.sum(1) - tp)
    assert result["miou"] == pytest.approx(100 * np.nanmean(iou))
    assert result["acc"] == pytest.approx(100 * tp.sum() / moved.sum())
