"""Unsupervised segmentation metrics: one confusion matrix over the whole split, one Hungarian match.

Matching per image or averaging metrics across processes would change the numbers; confusion
matrices are summed first (across images and processes) and matched once, as the original does.

The confusion is C classes x K clusters. With K <= C the clusters are matched one-to-one (with
K < C the classes no cluster matched score 0). With K > C (over-clustering) the one-to-one figures
leave K - C clusters unmatched, so the many-to-one matching (each cluster to the class it overlaps
most) is reported beside them, never mixed with them (docs/evaluation.md).
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def confusion_matrix(pred, label, num_classes, num_clusters=None):
    """hist[gt, cluster] over pixels with 0 <= gt < num_classes (255 and other values ignored).

    ``pred`` and ``label`` are integer tensors of the same shape.
    """
    num_clusters = num_clusters or num_classes
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    label = label.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = (label >= 0) & (label < num_classes)
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_clusters):
        raise ValueError(f"predicted cluster ids must lie in 0..{num_clusters - 1}")
    flat = torch.where(valid, label * num_clusters + pred, num_classes * num_clusters)  # invalid -> overflow bin
    counts = torch.bincount(flat, minlength=num_classes * num_clusters + 1)
    return counts[:-1].reshape(num_classes, num_clusters)


def hungarian_match(confusion):
    """cluster_to_class[k]: the class matched to cluster k (-1 for clusters left unmatched)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    class_ids, cluster_ids = linear_sum_assignment(confusion, maximize=True)
    cluster_to_class = np.full(confusion.shape[1], -1, dtype=np.int64)
    cluster_to_class[cluster_ids] = class_ids
    return cluster_to_class


def many_to_one_match(confusion):
    """cluster_to_class[k]: the class cluster k overlaps most (ties, and clusters without labelled
    pixels, go to the lowest class id: ``argmax`` takes the first maximum)."""
    return np.asarray(confusion).argmax(axis=0).astype(np.int64)


def segmentation_metrics(confusion, cluster_to_class=None):
    """Pixel accuracy, mIoU, per-class IoU and accuracy (percent) after matching clusters to classes.

    ``cluster_to_class`` (default: the Hungarian match) may give a class several clusters (the
    many-to-one match): class c is then predicted wherever one of its clusters is. IoU_c = tp /
    (tp + fp + fn) with fp counted over every pixel given class c's clusters; a class absent from
    the labels and never predicted gives NaN and is left out of the mean, as in the original's
    ``nanmean``. The sums are of integer counts, exact in float64 whatever their order.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if cluster_to_class is None:
        cluster_to_class = hungarian_match(confusion)
    cluster_to_class = np.asarray(cluster_to_class, dtype=np.int64)
    num_classes = confusion.shape[0]
    gt_total = confusion.sum(axis=1)
    pred_total = confusion.sum(axis=0)
    tp = np.zeros(num_classes)
    predicted_as_class = np.zeros(num_classes)
    for cluster, cls in enumerate(cluster_to_class):
        if cls >= 0:
            tp[cls] += confusion[cls, cluster]
            predicted_as_class[cls] += pred_total[cluster]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt_total + predicted_as_class - tp)
        class_acc = tp / gt_total
    total = confusion.sum()
    return {
        "acc": 100.0 * tp.sum() / total if total else float("nan"),
        "miou": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_class_acc": 100.0 * float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan"),
        "iou": 100.0 * iou,
        "class_acc": 100.0 * class_acc,
        "cluster_to_class": cluster_to_class,
    }


def clustering_metrics(confusion):
    """:func:`segmentation_metrics` of the Hungarian match, plus, when the clusters outnumber the
    classes, those of the many-to-one match under ``"many_to_one"``."""
    metrics = segmentation_metrics(confusion)
    num_classes, num_clusters = np.shape(confusion)
    if num_clusters > num_classes:
        metrics["many_to_one"] = segmentation_metrics(confusion, many_to_one_match(confusion))
    return metrics


def selection_miou(metrics):
    """The mIoU that picks a run's best epoch: the many-to-one one when the clusters outnumber the
    classes (the one-to-one match leaves clusters out), else the Hungarian one."""
    return float(metrics["many_to_one"]["miou"] if "many_to_one" in metrics else metrics["miou"])
