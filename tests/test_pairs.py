"""Training-pair geometry (docs/method.md#training-pairs): overlap, bounds, small images, label mapping."""

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.baselines import whole_image_pair
from data.pairs import TrainingPairs, overlapping_crops, random_resize_size
from data.registry import get_dataset
from data.sampler import GlobalBatchSampler
from data.synthetic import write_synthetic_cocostuff
from data.transforms import normalize_uint8
from engine.training import train_loader
from utils.constants import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import OptionError


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
    write_synthetic_cocostuff(tmp_path, num_train=3, num_val=0, sizes=((320, 256), (180, 200), (240, 240)))
    dataset = TrainingPairs(get_dataset("cocostuff27"), tmp_path, seed=5)
    for index in range(3):
        sample = dataset[(0, index)]
        assert sample["image"].shape == sample["image_aug"].shape == (3, 224, 224)
        assert sample["image"].dtype == sample["image_aug"].dtype == torch.uint8
        assert sample["label"].shape == (224, 224) and sample["label"].dtype == torch.uint8
        assert set(sample["label"].unique().tolist()) <= set(range(27)) | {255}
    # Same (seed, epoch, index) -> same sample; another epoch -> another draw.
    assert torch.equal(dataset[(0, 0)]["crops"], dataset[(0, 0)]["crops"])
    assert len({tuple(dataset[(epoch, 0)]["crops"].tolist()) for epoch in (1, 2)}) == 2


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
    dataset = TrainingPairs(get_dataset("cocostuff27"), tmp_path, seed=0)
    for epoch in range(6):
        sample = dataset[(epoch, 0)]
        red = sample["image"][0] > sample["image"][2]  # (224, 224)
        assert set(sample["label"].unique().tolist()) <= {9, 23}
        agree = ((sample["label"] == 9) == red).float().mean()
        assert agree > 0.98  # only the resized boundary column may differ


def test_crops_match_the_whole_image_pipeline(tmp_path):
    """Labels equal flip + resize + crop of the whole label exactly; image values differ by at most
    2 of 255 (Pillow keeps the resampling box in float32; see data/pairs.py), on a minority of values."""
    ids = write_synthetic_cocostuff(
        tmp_path,
        num_train=6,
        num_val=0,
        sizes=((640, 480), (480, 640), (500, 375), (180, 200), (224, 224), (1000, 300)),
    )["train"]
    dataset = TrainingPairs(get_dataset("cocostuff27"), tmp_path, seed=3)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    differing = []
    for epoch in range(4):
        for index, image_id in enumerate(ids):
            ours = dataset[(epoch, index)]
            ref = whole_image_pair(dataset.spec, tmp_path, "train", image_id, 3, epoch, index)
            assert tuple(ours["crops"].tolist()) == ref["crops"]
            assert torch.equal(ours["label"].long(), ref["label"])
            for view in ("image", "image_aug"):
                ref_uint8 = (ref[view] * std + mean) * 255  # (3, 224, 224), back to 0..255
                diff = (ours[view].float() - ref_uint8).abs().round()
                assert diff.max() <= 2
                differing.append((diff > 0).float().mean().item())
                # Normalising on the device gives the reference's floats for the same bytes.
                torch.testing.assert_close(
                    normalize_uint8(ours[view]), (ours[view].float() / 255 - mean) / std, rtol=0, atol=0
                )
    assert np.mean(differing) < 0.35


def test_global_batches_split_between_processes():
    """N processes see contiguous shares of the batches one process sees; resuming skips batches."""
    single = GlobalBatchSampler(26, 6, seed=4)
    single.set_epoch(2)
    batches = list(single)
    assert len(batches) == 4 and all(len(batch) == 6 for batch in batches)
    assert len({index for batch in batches for _, index in batch}) == 24 and {
        e for batch in batches for e, _ in batch
    } == {2}
    for world in (2, 3, 6):
        shares = [GlobalBatchSampler(26, 6, seed=4, rank=rank, world_size=world) for rank in range(world)]
        for share in shares:
            share.set_epoch(2)
        assert [sum(parts, []) for parts in zip(*shares)] == batches
    single.set_epoch(2, start_batch=3)
    assert list(single) == batches[3:] and len(single) == 1
    single.set_epoch(3)
    assert list(single) != batches
    with pytest.raises(OptionError, match="divisible"):
        GlobalBatchSampler(26, 6, world_size=4)


def crops_by_image(loader, epochs):
    """{(epoch, index): (crops, first view)} as the loader delivers them."""
    seen = {}
    for epoch in epochs:
        loader.batch_sampler.set_epoch(epoch)
        keys = list(loader.batch_sampler)  # the sampler is deterministic: the loader's batches, in order
        for batch, batch_keys in zip(loader, keys, strict=True):
            for row, key in enumerate(batch_keys):
                seen[key] = (tuple(batch["crops"][row].tolist()), batch["image"][row])
    return seen


def test_loader_draws_new_augmentations_every_epoch(tmp_path):
    """With the configs' default workers (8, persistent) every epoch has its own crops of an image,
    the same crops as --num-workers 0 gives."""
    write_synthetic_cocostuff(tmp_path, num_train=8, num_val=0, sizes=((320, 256), (288, 352)))
    with_workers = train_loader(tmp_path, 4, seed=2, num_workers=8, device="cpu")
    assert with_workers.persistent_workers
    seen = crops_by_image(with_workers, (0, 1))
    without = crops_by_image(train_loader(tmp_path, 4, seed=2, num_workers=0, device="cpu"), (0, 1))
    assert seen.keys() == without.keys() == {(epoch, index) for epoch in (0, 1) for index in range(8)}
    for key, (crops, image) in seen.items():
        assert crops == without[key][0] and torch.equal(image, without[key][1])
    for index in range(8):
        assert seen[(0, index)][0] != seen[(1, index)][0]
        assert not torch.equal(seen[(0, index)][1], seen[(1, index)][1])
