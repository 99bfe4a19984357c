"""COCO-Stuff-27 reading: label map, split lists, clear errors for bad input."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from data.cocostuff import (
    SHIPPED_CURATED_DIR, CocoStuffEval, DataError, class_names, load_label_map, map_fine_to_coarse, read_split_ids,
    split_list_path,
)
from data.synthetic import write_synthetic_cocostuff
from data.transforms import SlidingTransform


def test_shipped_lists_are_the_curated_ones():
    for split, count, md5 in (("train", 49629, "bf3d54a2"), ("val", 2175, "de66cfb9")):
        path = SHIPPED_CURATED_DIR / f"{split}2017" / "Coco164kFull_Stuff_Coarse_7.txt"
        assert hashlib.md5(path.read_bytes()).hexdigest().startswith(md5)
        assert len(read_split_ids("/nonexistent", split)) == count


def test_label_map():
    lut, names = load_label_map()
    assert len(names) == 27 and names[0] == "electronic" and names[26] == "water"
    fine = np.array([[0, 1, 181], [255, 105, 170]], np.uint8)
    np.testing.assert_array_equal(map_fine_to_coarse(fine), [[9, 11, 24], [255, 23, 18]])
    with pytest.raises(DataError, match=r"bad.png: label values \[200\]"):
        map_fine_to_coarse(np.array([200, 3], np.uint8), source="bad.png")


def test_root_lists_win_over_shipped(tmp_path):
    write_synthetic_cocostuff(tmp_path, num_train=1, num_val=2)
    assert split_list_path(tmp_path, "val") == tmp_path / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
    assert read_split_ids(tmp_path, "val") == ["000000000002", "000000000003"]
    assert split_list_path(tmp_path / "other", "val").is_relative_to(SHIPPED_CURATED_DIR)


def test_missing_folders_images_labels_and_bad_values(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        CocoStuffEval(tmp_path / "absent", SlidingTransform())
    ids = write_synthetic_cocostuff(tmp_path, num_train=0, num_val=4)["val"]
    dataset = CocoStuffEval(tmp_path, SlidingTransform())
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
    sample = CocoStuffEval(tmp_path, SlidingTransform(224))[0]
    assert sample["image"].shape == (3, 336, 224)
    assert sample["label"].shape == (336, 224)
    assert set(np.unique(sample["label"].numpy())) <= set(range(27)) | {255}
    assert len(class_names()) == 27
