"""The palette, the colour/indexed PNGs and eval.py --save-visuals."""

import json

import numpy as np
import pytest
import torch
from helpers import save_released, small_model
from PIL import Image

import eval as eval_cli
from data.synthetic import write_synthetic_cocostuff
from data.transforms import to_normalized_tensor
from engine.visualize import (
    CAPTION_HEIGHT,
    IGNORE_COLOUR,
    PALETTE,
    VisualCollector,
    colorize,
    confusion_by_class,
    denormalize,
    indexed_png,
    legend,
    map_clusters,
    overlay,
    plot_confusion,
    plot_per_class_iou,
    side_by_side,
)


def is_png(path):
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def random_mask(height=23, width=31, seed=0):
    mask = np.random.default_rng(seed).integers(0, 27, size=(height, width))
    mask[:2] = 255
    return mask


def test_palette_is_27_distinct_colours():
    assert PALETTE.shape == (27, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(colour) for colour in PALETTE}) == 27
    assert tuple(IGNORE_COLOUR) not in {tuple(colour) for colour in PALETTE}
    distances = np.linalg.norm(PALETTE[:, None].astype(float) - PALETTE[None].astype(float), axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 50


def test_colorize_and_indexed_round_trip(tmp_path):
    mask = random_mask()
    colour = np.array(colorize(torch.from_numpy(mask)))
    assert colour.shape == (23, 31, 3)
    assert (colour[2:] == PALETTE[mask[2:]]).all() and (colour[:2] == IGNORE_COLOUR).all()
    indexed_png(mask).save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as reread:
        assert reread.mode == "P"
        assert (np.array(reread) == mask).all()
        assert (np.array(reread.convert("RGB")) == colour).all()


def test_bad_ids_are_refused():
    with pytest.raises(ValueError, match="0..26 or 255"):
        colorize(np.full((4, 4), 27))
    with pytest.raises(ValueError, match="assignment"):
        map_clusters(np.full((4, 4), 5), [0, 1, 2])


def test_map_clusters_sends_unmatched_to_ignore():
    pred = np.array([[0, 1], [2, 1]])
    assert (map_clusters(pred, [4, -1, 7]) == np.array([[4, 255], [7, 255]])).all()


def test_denormalize_overlay_and_side_by_side():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    back = denormalize(to_normalized_tensor(image))
    assert np.abs(np.array(back, dtype=int) - np.array(image, dtype=int)).max() <= 1
    colour = colorize(random_mask(20, 30))
    assert (np.array(overlay(image, colour, alpha=0.0)) == np.array(image)).all()
    panel = side_by_side(image, colour, colour)
    assert panel.size == (90, 20 + CAPTION_HEIGHT)
    assert legend(["sky", "cluster 3"], PALETTE[:2]).size[1] > 32


def test_plots_are_pngs(tmp_path):
    names = [f"class {c}" for c in range(5)]
    confusion = np.random.default_rng(2).integers(0, 100, (5, 5))
    confusion[3] = 0  # a class absent from the labels must not divide by zero
    plot_confusion(confusion, names, tmp_path / "confusion.png", cluster_to_class=[4, 3, 2, 1, 0])
    plot_per_class_iou(dict(zip(names, [10.0, float("nan"), None, 50.0, 99.0])), tmp_path / "iou.png")
    assert is_png(tmp_path / "confusion.png") and is_png(tmp_path / "iou.png")
    assert (confusion_by_class(confusion, [4, 3, 2, 1, 0]) == confusion[:, ::-1]).all()


def test_collector_keeps_the_first_n():
    collector = VisualCollector(2)
    image = to_normalized_tensor(Image.new("RGB", (8, 6)))
    for index in range(4):
        collector(
            {"image": image, "label": torch.zeros(6, 8, dtype=torch.uint8), "id": str(index)},
            torch.zeros(6, 8, dtype=torch.long),
        )
    assert [item[0] for item in collector.items] == ["0", "1"]


def test_eval_save_visuals(tmp_path):
    root = tmp_path / "data"
    ids = write_synthetic_cocostuff(root, num_train=0, num_val=3, sizes=((320, 256), (200, 300), (240, 240)))["val"]
    checkpoint = save_released(small_model(), tmp_path / "small.pth")
    visuals = tmp_path / "visuals"
    code = eval_cli.main(
        [
            "--data-root",
            str(root),
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--save-visuals",
            str(visuals),
            "--num-visuals",
            "2",
            "--output-json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    # Sliding works at each image's own size; the 200x300 image is upscaled to 224x336 first.
    expected = {ids[0]: (320, 256), ids[1]: (224, 336)}
    assert sorted(p.stem for p in visuals.glob("0*.png")) == sorted(expected)
    for image_id, (width, height) in expected.items():
        with Image.open(visuals / f"{image_id}.png") as panel:
            assert panel.size == (3 * width, height + CAPTION_HEIGHT)
    for name in ("confusion.png", "per_class_iou.png", "legend.png"):
        assert is_png(visuals / name)
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 3
