"""The dataset registry: label maps (unused and ignored ids), split discovery, training preprocessing
and one clear error per bad input, for each layout (synthetic data written by the tests)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat

from data.cityscapes import five_crop_boxes
from data.cocostuff import LABEL_MAP_FILE
from data.pairs import TrainingPairs
from data.registry import DATASET_NAMES, get_dataset
from data.spec import DataError
from data.synthetic import write_synthetic_cityscapes, write_synthetic_potsdam

UNUSED_FINE_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    write_synthetic_cityscapes(root, num_train=3, num_val=2)
    return root


@pytest.fixture(scope="module")
def potsdam_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam")
    write_synthetic_potsdam(root, num_train=3, num_val=2)
    return root


def test_registry_names_palettes_and_unknown_name():
    assert DATASET_NAMES == ("cocostuff27", "cocostuff171", "cityscapes27", "potsdam3")
    for name in DATASET_NAMES:
        spec = get_dataset(name)
        assert spec.name == name and get_dataset(spec) is spec
        colours = {tuple(colour) for colour in spec.palette}
        assert spec.palette.shape == (spec.num_classes, 3) and len(colours) == spec.num_classes
        assert (0, 0, 0) not in colours  # black is the colour of ignored pixels
    assert [get_dataset(name).num_classes for name in DATASET_NAMES] == [27, 171, 27, 3]
    with pytest.raises(
        DataError, match="must be one of cocostuff27, cocostuff171, cityscapes27, potsdam3, folder, got 'coco'"
    ):
        get_dataset("coco")


def test_cocostuff171_classes_and_label_map():
    spec = get_dataset("cocostuff171")
    names = spec.class_names
    assert len(names) == 171 and names[0] == "person" and names[-1] == "wood"
    assert names[79] == "toothbrush" and names[80] == "banner"  # 80 things, then 91 stuff
    assert "street sign" not in names and "hair brush" not in names  # removed from COCO, never in the maps
    fine = np.array([[0, 10, 12, 24, 26], [89, 91, 92, 181, 255]], np.uint8)
    np.testing.assert_array_equal(spec.map_label(fine, "x.png"), [[0, 10, 11, 23, 24], [79, 80, 81, 170, 255]])
    for unused in (*UNUSED_FINE_IDS, 182, 254):
        with pytest.raises(DataError, match=rf"x.png: label values \[{unused}\]"):
            spec.map_label(np.array([3, unused], np.uint8), "x.png")
    # COCO-Stuff-27 keeps reading the shipped map unchanged (its fine ids 11, 90 ... are valid there).
    coco27 = get_dataset("cocostuff27")
    shipped = json.loads(LABEL_MAP_FILE.read_text())
    assert list(coco27.class_names) == shipped["coarse_names"]
    np.testing.assert_array_equal(
        coco27.map_label(np.array([11, 90, 255], np.uint8), "y.png"),
        [shipped["fine_to_coarse"]["11"], shipped["fine_to_coarse"]["90"], 255],
    )


def test_cityscapes_label_map():
    spec = get_dataset("cityscapes27")
    assert spec.class_names[0] == "road" and spec.class_names[-1] == "bicycle" and spec.num_classes == 27
    raw = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 23, 33, 255], np.uint8)
    np.testing.assert_array_equal(spec.map_label(raw, "l.png"), [255] * 7 + [0, 1, 16, 26, 255])
    for bad in (34, 100, 254):
        with pytest.raises(DataError, match=rf"l.png: label values \[{bad}\]"):
            spec.map_label(np.array([7, bad], np.uint8), "l.png")


def test_potsdam_label_map():
    spec = get_dataset("potsdam3")
    raw = np.array([0, 4, 1, 5, 2, 3, 255], np.int32)  # IIC's tiles store int32 ids
    np.testing.assert_array_equal(spec.map_label(raw, "gt.mat"), [0, 0, 1, 1, 2, 2, 255])
    for bad in (6, 1000, -1):
        with pytest.raises(DataError, match=rf"gt.mat: label values \[{bad}\]"):
            spec.map_label(np.array([0, bad], np.int32), "gt.mat")


def test_cityscapes_split_discovery(cityscapes_root):
    spec = get_dataset("cityscapes27")
    train = spec.split_ids(cityscapes_root, "train")
    assert train == sorted(train) and len(train) == 3 and {i.split("_")[0] for i in train} == {"aachen", "bochum"}
    val = spec.split_ids(cityscapes_root, "val")
    assert len(val) == 2 and spec.image_path(cityscapes_root, "val", val[0]).is_file()
    label = spec.read_label(cityscapes_root, "val", val[0])
    assert set(np.unique(label).tolist()) <= set(range(27)) | {255} and (label == 255).any()
    with pytest.raises(DataError, match="split must be one of"):
        spec.split_ids(cityscapes_root, "test")


def test_cityscapes_missing_folders_and_bad_labels(tmp_path):
    spec = get_dataset("cityscapes27")
    with pytest.raises(DataError, match="no such folder"):
        spec.check_root(tmp_path / "absent", "val")
    ids = write_synthetic_cityscapes(tmp_path, num_train=0, num_val=3)["val"]
    (tmp_path / "gtFine" / "val" / "lindau").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"gtFine/val/lindau: city folder missing \(1 of the 2 cities"):
        spec.check_root(tmp_path, "val")
    (tmp_path / "elsewhere").rename(tmp_path / "gtFine" / "val" / "lindau")
    spec.check_root(tmp_path, "val")
    label_file = spec.label_path(tmp_path, "val", ids[0])
    label = np.array(Image.open(label_file))
    label[3, 3] = 40
    Image.fromarray(label).save(label_file)
    with pytest.raises(DataError, match=rf"{ids[0]}_gtFine_labelIds.png: label values \[40\]"):
        spec.read_label(tmp_path, "val", ids[0])
    Image.fromarray(np.zeros((224, 448, 3), np.uint8)).save(label_file)  # a colour PNG, not label ids
    with pytest.raises(DataError, match="expected a single-channel labelIds PNG, got mode RGB"):
        spec.read_label(tmp_path, "val", ids[0])
    spec.image_path(tmp_path, "val", ids[1]).unlink()
    with pytest.raises(DataError, match="image file not found"):
        spec.read_pair(tmp_path, "val", ids[1])


def test_cityscapes_training_items_are_stegos_five_crops(cityscapes_root):
    spec = get_dataset("cityscapes27")
    assert five_crop_boxes(2048, 1024) == [
        (0, 0, 1024, 512),
        (1024, 0, 2048, 512),
        (0, 512, 1024, 1024),
        (1024, 512, 2048, 1024),
        (512, 256, 1536, 768),
    ]
    items = spec.train_items(cityscapes_root, "train")
    assert len(items) == 15 and items[:5] == [(items[0][0], k) for k in range(5)]
    image, label = spec.read_pair(cityscapes_root, "train", items[0][0])
    for (image_id, crop), box in zip(items[:5], five_crop_boxes(*image.size)):
        part, raw, source = spec.read_train_raw(cityscapes_root, "train", (image_id, crop))
        part_label = spec.map_label(raw, source)
        assert part.size == (224, 112)
        np.testing.assert_array_equal(np.array(part), np.array(image.crop(box)))
        np.testing.assert_array_equal(np.array(part_label), np.array(label.crop(box)))


def test_potsdam_reading_and_errors(potsdam_root, tmp_path):
    spec = get_dataset("potsdam3")
    assert spec.split_ids(potsdam_root, "train") == ["0", "1", "2"] and spec.split_ids(potsdam_root, "val") == [
        "3",
        "4",
    ]
    image, label = spec.read_pair(potsdam_root, "val", "3")
    stored = loadmat(potsdam_root / "imgs" / "3.mat")["img"]
    assert stored.shape == (200, 200, 4) and image.mode == "RGB" and image.size == (200, 200)
    np.testing.assert_array_equal(np.array(image), stored[:, :, :3])  # infrared dropped
    assert set(np.unique(np.array(label)).tolist()) <= {0, 1, 2, 255}
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(DataError, match="labelled_test.txt: missing"):
        spec.check_root(tmp_path, "val")
    savemat(tmp_path / "imgs" / "9.mat", {"picture": np.zeros((4, 4, 4), np.uint8)})
    with pytest.raises(DataError, match=r"9.mat: no 'img' variable \(found \['picture'\]\)"):
        spec.read_image(tmp_path, "val", "9")
    (tmp_path / "gt" / "9.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="9.mat: cannot read the label"):
        spec.read_label(tmp_path, "val", "9")


@pytest.mark.parametrize("name", ["cityscapes27", "potsdam3"])
def test_training_pairs_per_dataset(name, cityscapes_root, potsdam_root):
    root = cityscapes_root if name == "cityscapes27" else potsdam_root
    spec = get_dataset(name)
    pairs = TrainingPairs(spec, root, seed=3)
    assert len(pairs) == len(spec.train_items(root, "train"))
    for index in range(len(pairs)):
        sample = pairs[(0, index)]
        assert sample["image"].shape == sample["image_aug"].shape == (3, 224, 224)
        assert sample["label"].dtype == torch.uint8
        assert set(sample["label"].unique().tolist()) <= set(range(spec.num_classes)) | {255}
