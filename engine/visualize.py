"""Pictures of segmentations: a fixed class palette, colour and indexed PNGs, overlays, side-by-side
panels, legends, and the confusion / per-class IoU plots of an evaluation.

One palette serves both cluster ids and matched class ids, so a picture coloured by class after
Hungarian matching uses the same colours as the ground truth, and the same class always looks the
same across images, runs and tools.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from data.cocostuff import PALETTE
from utils.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from utils.files import atomic_path, save_image_atomic

# Unlabelled pixels (255) and clusters no class was matched to.
IGNORE_COLOUR = (0, 0, 0)
CAPTION_HEIGHT = 16
PANEL_TITLES = ("image", "ground truth", "prediction (matched)")
NAMED_PANEL_TITLES = ("image", "ground truth", "prediction (names)")


def _as_numpy_mask(mask):
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    # Integer masks index the palette as they are (a uint8 map of a 24 MP photo is not copied to int64).
    return mask if np.issubdtype(mask.dtype, np.integer) else mask.astype(np.int64)


def _check_ids(mask, palette):
    valid = ((mask >= 0) & (mask < len(palette))) | (mask == IGNORE_INDEX)
    if not valid.all():
        bad = np.unique(mask[~valid])[:10].tolist()
        raise ValueError(f"mask values must be ids 0..{len(palette) - 1} or {IGNORE_INDEX} (ignore); found {bad}")


def colour_table(palette=PALETTE):
    """A 256-entry lookup table: ids index the palette, 255 gets the ignore colour."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table


def colorize(mask, palette=PALETTE):
    """RGB picture of an id mask (H, W): palette colour per id, ignore colour for 255."""
    mask = _as_numpy_mask(mask)
    _check_ids(mask, palette)
    return Image.fromarray(colour_table(palette)[mask])  # (H, W, 3)


def indexed_png(mask, palette=PALETTE):
    """A palette ('P') image whose pixel values are the ids themselves.

    The file keeps the exact ids for later analysis while image viewers still show colours;
    ``palette`` row k is the colour shown for id k (e.g. the colour of the class cluster k matched).
    """
    mask = _as_numpy_mask(mask)
    _check_ids(mask, palette)
    image = Image.fromarray(mask.astype(np.uint8))  # 'L', (H, W)
    image.putpalette(colour_table(palette).reshape(-1).tolist())  # now 'P', same values
    return image


def map_clusters(pred, cluster_to_class):
    """Class ids from cluster ids; clusters matched to no class (-1) become 255 (ignore)."""
    pred = _as_numpy_mask(pred)
    cluster_to_class = np.asarray(cluster_to_class, dtype=np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= len(cluster_to_class)):
        raise ValueError(
            f"cluster ids must lie in 0..{len(cluster_to_class) - 1} (the assignment's size), "
            f"found {pred.min()}..{pred.max()}"
        )
    lookup = np.where(cluster_to_class >= 0, cluster_to_class, IGNORE_INDEX)
    return lookup[pred]  # (H, W)


def overlay(image, colour, alpha=0.5):
    """The colour picture blended over the image: alpha 0 is the image, 1 the colours."""
    if image.size != colour.size:
        raise ValueError(
            f"overlay: image is {image.size[0]}x{image.size[1]} but the colours are {colour.size[0]}x{colour.size[1]}"
        )
    return Image.blend(image.convert("RGB"), colour.convert("RGB"), alpha)


def denormalize(tensor):
    """A normalised (3, H, W) image tensor back to an RGB picture (ImageNet mean and std undone)."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"denormalize expects a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)  # (3, 1, 1)
    pixels = (tensor.detach().cpu().float() * std + mean).clamp(0, 1)  # (3, H, W)
    return Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy())  # (H, W, 3)


def side_by_side(image, gt_colour, pred_colour, titles=PANEL_TITLES):
    """image | ground truth | prediction, 3W wide, with a caption row of CAPTION_HEIGHT on top."""
    panels = [image.convert("RGB"), gt_colour.convert("RGB"), pred_colour.convert("RGB")]
    sizes = {panel.size for panel in panels}
    if len(sizes) != 1:
        raise ValueError(f"side_by_side: the three pictures must have one size, got {sorted(sizes)}")
    width, height = panels[0].size
    canvas = Image.new("RGB", (3 * width, height + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(panel, (index * width, CAPTION_HEIGHT))
        draw.text((index * width + 3, 2), title, fill="black")
    return canvas


def legend(names, colours, swatch=16, padding=4):
    """A picture listing each name beside its colour swatch, one row each."""
    names = list(names)
    colours = [tuple(int(v) for v in colour) for colour in colours]
    if len(names) != len(colours):
        raise ValueError(f"legend: {len(names)} names but {len(colours)} colours")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max((measure.textlength(name) for name in names), default=0)
    row = swatch + padding
    canvas = Image.new("RGB", (int(swatch + 3 * padding + text_width), max(1, len(names)) * row + padding), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (name, colour) in enumerate(zip(names, colours)):
        top = padding + index * row
        draw.rectangle((padding, top, padding + swatch - 1, top + swatch - 1), fill=colour, outline=(96, 96, 96))
        draw.text((2 * padding + swatch, top + 2), name, fill="black")
    return canvas


def _pyplot():
    """pyplot on the Agg backend, so plots are written on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_by_class(confusion, cluster_to_class):
    """hist[gt, cluster] (C, K) with its columns gathered into the matched classes: hist[gt, class]
    (C, C); a class matched by several clusters (many-to-one) sums their columns."""
    confusion = np.asarray(confusion, dtype=np.float64)
    by_class = np.zeros((confusion.shape[0], confusion.shape[0]))  # (C, C)
    for cluster, cls in enumerate(cluster_to_class):
        if cls >= 0:
            by_class[:, cls] += confusion[:, cluster]
    return by_class


def plot_confusion(confusion, class_names, path, cluster_to_class=None):
    """Row-normalised heat map: rows ground truth, columns matched classes, so the diagonal is each
    class's recall. ``cluster_to_class`` reorders cluster columns to classes; without it the columns
    are taken to be in class order already."""
    matrix = np.asarray(confusion, dtype=np.float64)
    if cluster_to_class is not None:
        matrix = confusion_by_class(matrix, cluster_to_class)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"plot_confusion: confusion is {matrix.shape} but there are {len(class_names)} class names")
    totals = matrix.sum(axis=1, keepdims=True)  # (C, 1)
    rows = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)  # (C, C)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 9))
    shown = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels=class_names, fontsize=8)
    ax.set_xlabel("predicted class (clusters after Hungarian matching)")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion, rows normalised")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_per_class_iou(per_class_iou, path, palette=PALETTE):
    """Bar chart of IoU (percent) per class, in the classes' palette colours; classes without a value
    (absent, NaN) are marked n/a."""
    names = list(per_class_iou)
    values = np.array([np.nan if v is None else float(v) for v in per_class_iou.values()])
    finite = np.isfinite(values)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(names) + 2), 5))
    positions = np.arange(len(names))
    colours = palette[: len(names)] / 255.0 if len(names) <= len(palette) else None
    ax.bar(positions, np.where(finite, values, 0.0), color=colours, edgecolor="black", linewidth=0.5)
    for position in positions[~finite]:
        ax.text(position, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set_xticks(positions, labels=names, rotation=90, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU %")
    mean = f"mIoU {np.nanmean(values):.1f}%" if finite.any() else "no class scored"
    ax.set_title(f"per-class IoU ({mean})")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")


class VisualCollector:
    """Keeps the first ``num_images`` (image, label, prediction) of an evaluation in memory.

    The Hungarian matching that turns clusters into classes is only known once the whole split is
    scored, so pictures are written after ``evaluate()`` with ``write()``. Pass an instance as
    ``evaluate(..., on_image=collector)``. ``palette`` colours the dataset's classes. With
    ``names`` (engine/names.py's ClusterNames, set before ``write()``) the prediction panel shows
    the clusters in their names' colours instead of their matched classes', and
    ``legend_names.png`` lists the names.
    """

    def __init__(self, num_images, palette=PALETTE):
        if num_images < 0:
            raise ValueError(f"the number of pictures to keep must be >= 0, got {num_images}")
        self.num_images = num_images
        self.palette = palette
        self.names = None
        self.items = []

    def __call__(self, sample, pred):
        if len(self.items) >= self.num_images:
            return
        label = _as_numpy_mask(sample["label"])
        pred = _as_numpy_mask(pred)
        if label.shape != pred.shape:
            raise ValueError(f"image {sample['id']}: label is {label.shape} but the prediction is {pred.shape}")
        image = denormalize(sample["image"])
        if image.size != (label.shape[1], label.shape[0]):  # the photo protocol reads at the working size
            image = image.resize((label.shape[1], label.shape[0]), Image.BILINEAR)
        self.items.append((str(sample["id"]), image, label, pred))

    def write(self, out_dir, cluster_to_class, class_names, confusion, per_class_iou):
        """Write <id>.png panels, legend.png (legend_names.png with names), confusion.png and
        per_class_iou.png; returns the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for image_id, image, label, pred in self.items:
            if self.names is None:
                shown, titles = colorize(map_clusters(pred, cluster_to_class), self.palette), PANEL_TITLES
            else:
                shown, titles = colorize(pred, self.names.merged_colours()), NAMED_PANEL_TITLES
            panel = side_by_side(image, colorize(label, self.palette), shown, titles)
            written.append(out_dir / f"{image_id}.png")
            written[-1].parent.mkdir(parents=True, exist_ok=True)  # a folder dataset's ids hold subfolders
            save_image_atomic(panel, written[-1])
        if self.names is not None:
            entries = self.names.legend_entries()
            written.append(out_dir / "legend_names.png")
            save_image_atomic(legend([text for text, _ in entries], [colour for _, colour in entries]), written[-1])
        written.append(out_dir / "legend.png")
        save_image_atomic(legend(class_names, self.palette[: len(class_names)]), written[-1])
        written.append(out_dir / "confusion.png")
        plot_confusion(confusion, class_names, written[-1], cluster_to_class)
        written.append(out_dir / "per_class_iou.png")
        plot_per_class_iou(per_class_iou, written[-1], self.palette)
        return written
