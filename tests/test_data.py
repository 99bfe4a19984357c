"""COCO-Stuff-27 reading: label map, split lists, clear errors for bad input."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from data.cocostuff import SHIPPED_CURATED_DIR, read_split_ids, split_list_path
from data.registry import get_dataset
from data.spec import DataError, SegmentationEval
from data.synthetic import write_synthetic_cocostuff
from data.transforms import SlidingTransform

COCOSTUFF27 = get_dataset("cocostuff27")


def test_shipped_lists_are_the_curated_ones():
    for split, count, md5 in (("train", 49629, "bf3d54a2"), ("val", 2175, "de66cfb9")):
        path = SHIPPED_CURATED_DIR / f"{split}2017" / "Coco164kFull_Stuff_Coarse_7.txt"
        assert hashlib.md5(path.read_bytes()).hexdigest().startswith(md5)
        assert len(read_split_ids("/nonexistent", split)) == count


def test_label_map():
    names = COCOSTUFF27.class_names
    assert len(names) == 27 and names[0] == "electronic" and names[26] == "water"
    fine = np.array([[0, 1, 181], [255, 105, 170]], np.uint8)
    np.testing.assert_array_equal(COCOSTUFF27.map_label(fine, "x.png"), [[9, 11, 24], [255, 23, 18]])
    assert COCOSTUFF27.lut.shape == (256,) and (COCOSTUFF27.lut[182:255] == -1).all()
    with pytest.raises(DataError, match=r"bad.png: label values \[200\]"):
        COCOSTUFF27.map_label(np.array([200, 3], np.uint8), "bad.png")


def test_root_lists_win_over_shipped(tmp_path):
    write_synthetic_cocostuff(tmp_path, num_train=1, num_val=2)
    assert split_list_path(tmp_path, "val") == tmp_path / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
    assert read_split_ids(tmp_path, "val") == ["000000000002", "000000000003"]
    assert split_list_path(tmp_path / "other", "val").is_relative_to(SHIPPED_CURATED_DIR)


def test_missing_folders_images_labels_and_bad_values(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        SegmentationEval(COCOSTUFF27, tmp_path / "absent", SlidingTransform())
    ids = write_synthetic_cocostuff(tmp_path, num_train=0, num_val=4)["val"]
    dataset = SegmentationEval(COCOSTUFF27, tmp_path, SlidingTransform())
    (tmp_path / "images/val2017" / f"{ids[0]}.jpg").unlink()
    with pytest.raises(DataError, match=f"{ids[0]}.jpg: image file not found"):
        dataset[0]
    (tmp_path / "annotations/val2017" / f"{ids[1]}.png").unlink()
    with pytest.raises(DataError, match=f"{ids[1]}.png: label file not found"):
        dataset[1]
    label = np.array(Image.open(tmp_path / "annotations/val2017" / f"{ids[2]}.png"))
    label[5, 5] = 190
    Image.fromarray(label).save(tmp_path / "annotations/val2017" / f"{ids[2]}.png")
    with pytest.raises(DataError, match=rf"{ids[2]}.png: label values \[190\]"):
        dataset[2]
    (tmp_path / "images/val2017" / f"{ids[3]}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=f"{ids[3]}.jpg: cannot read the image"):
        dataset[3]


def test_sample_small_image_upscaled(tmp_path):
    write_synthetic_cocostuff(tmp_path, num_train=0, num_val=1, sizes=((200, 300),))
    sample = SegmentationEval(COCOSTUFF27, tmp_path, SlidingTransform(224))[0]
    assert sample["image"].shape == (3, 336, 224)
    assert sample["label"].shape == (336, 224)
    assert set(np.unique(sample["label"].numpy())) <= set(range(27)) | {255}
    assert COCOSTUFF27.num_classes == 27


def test_split_scan_counts_and_names_missing_files(tmp_path):
    check_split_files = COCOSTUFF27.check_split_files
    ids = write_synthetic_cocostuff(tmp_path, num_train=0, num_val=7, sizes=((230, 230),))["val"]
    assert check_split_files(tmp_path, "val") == ids and check_split_files(tmp_path, "val", limit=3) == ids[:3]
    for image_id in ids[:6]:
        (tmp_path / "images/val2017" / f"{image_id}.jpg").unlink()
    (tmp_path / "annotations/val2017" / f"{ids[6]}.png").unlink()
    with pytest.raises(DataError) as info:
        check_split_files(tmp_path, "val")
    message = str(info.value)
    assert "6 of 7 images missing" in message and f"{ids[0]}.jpg" in message and f"{ids[5]}.jpg" not in message
    assert "1 of 7 labels missing" in message and f"{ids[6]}.png" in message
    (tmp_path / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt").write_text(f"{ids[6]}\n{ids[6]}\n")
    with pytest.raises(DataError, match=f"1 id\\(s\\) listed more than once \\(first: {ids[6]}\\)"):
        read_split_ids(tmp_path, "val")


def test_photo_modes_become_8_bit_rgb():
    from data.photos import to_rgb

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent: white, as a page shows it
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    grey_float = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    assert to_rgb(grey_float).getpixel((0, 0)) == (128, 128, 128)
    wide = Image.fromarray(np.full((4, 4), 1000, np.int32))
    assert to_rgb(wide).getpixel((0, 0)) == (4, 4, 4)
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)
