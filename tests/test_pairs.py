"""Training-pair geometry (SPEC §4): overlap, bounds, small images, label mapping."""
import numpy as np
import pytest
import torch
from PIL import Image

from data.cocostuff import IMAGENET_MEAN, IMAGENET_STD
from data.pairs import CocoStuffPairs, overlapping_crops, random_resize_size
from data.synthetic import write_synthetic_cocostuff


@pytest.mark.parametrize("width,height", [(640, 480), (224, 224), (230, 900), (1000, 225)])
def test_crops_overlap_and_stay_inside(width, height):
    rng = np.random.default_rng(0)
    for _ in range(300):
        (top0, left0), (top1, left1) = overlapping_crops(width, height, rng)
        for top, left in ((top0, left0), (top1, left1)):
            assert 0 <= top <= height - 224 and 0 <= left <= width - 224
        assert abs(top1 - top0) <= 112 and abs(left1 - left0) <= 112


def test_resize_factors_and_small_images():
    rng = np.random.default_rng(1)
    sizes = np.array([random_resize_size(500, 400, rng) for _ in range(500)])
    assert sizes[:, 0].min() >= 400 and sizes[:, 0].max() <= 600
    assert sizes[:, 1].min() >= 320 and sizes[:, 1].max() <= 480
    assert abs(np.corrcoef(sizes[:, 0], sizes[:, 1])[0, 1]) < 0.2  # width and height drawn independently
    for _ in range(200):
        width, height = random_resize_size(150, 230, rng)
        assert min(width, height) >= 224


def test_sample_content_and_label_mapping(tmp_path):
    ids = write_synthetic_cocostuff(tmp_path, num_train=3, num_val=0, sizes=((320, 256), (180, 200), (240, 240)))["train"]
    dataset = CocoStuffPairs(tmp_path, seed=5)
    for index in range(3):
        sample = dataset[index]
        assert sample["image"].shape == sample["image_aug"].shape == (3, 224, 224)
        assert sample["label"].shape == (224, 224) and sample["label"].dtype == torch.int64
        assert set(sample["label"].unique().tolist()) <= set(range(27)) | {255}
    # Same (seed, epoch, index) -> same sample; another epoch -> another draw.
    assert torch.equal(dataset[0]["crops"], dataset[0]["crops"])
    dataset.set_epoch(1)
    draws = {tuple(dataset[0]["crops"].tolist())}
    dataset.set_epoch(2)
    draws.add(tuple(dataset[0]["crops"].tolist()))
    assert len(draws) == 2


def test_label_follows_pixels_through_flip_resize_crop(tmp_path):
    """Left half red with fine id 0 (person, coarse 9), right half blue with fine id 105 (sky, 23)."""
    for folder in ("images/train2017", "annotations/train2017", "curated/train2017"):
        (tmp_path / folder).mkdir(parents=True)
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, :200] = (255, 0, 0)
    image[:, 200:] = (0, 0, 255)
    label = np.zeros((300, 400), np.uint8)
    label[:, 200:] = 105
    Image.fromarray(image).save(tmp_path / "images/train2017/000000000001.png", format="PNG")
    (tmp_path / "images/train2017/000000000001.png").rename(tmp_path / "images/train2017/000000000001.jpg")
    Image.fromarray(label).save(tmp_path / "annotations/train2017/000000000001.png")
    (tmp_path / "curated/train2017/Coco164kFull_Stuff_Coarse_7.txt").write_text("000000000001\n")
    dataset = CocoStuffPairs(tmp_path, seed=0)
    for epoch in range(6):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        red = sample["image"][0] > sample["image"][2]  # (224, 224)
        assert set(sample["label"].unique().tolist()) <= {9, 23}
        agree = ((sample["label"] == 9) == red).float().mean()
        assert agree > 0.98  # only the resized boundary column may differ
