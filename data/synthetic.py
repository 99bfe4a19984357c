"""Synthetic scenes in each dataset's layout (COCO-Stuff, Cityscapes, Potsdam), for the demo and the tests.

Each scene has stuff-like textured bands (sky above, ground below, a wall or water in between)
and thing-like shapes (discs and boxes) on top, each class with its own colour and texture, so a
clustering method has something to find. Labels are stuffthingmaps-style fine ids with a border
of 255 (unlabelled); ids are chosen so every mapped coarse class is a real COCO-Stuff class. The
other layouts draw the same scenes with their own raw label ids standing in for each drawn class.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX
from data.cocostuff import COCOSTUFF27, SPLIT_LIST_NAME, split_folder
from data.potsdam import SPLIT_FILES

# Coarse classes drawn (name -> (colour, texture period in pixels)); names from cocostuff27.json.
STUFF_CLASSES = {
    "sky": ((110, 160, 230), 0),
    "ground": ((120, 95, 60), 6),
    "wall": ((200, 195, 180), 14),
    "water": ((40, 90, 140), 4),
    "plant": ((50, 140, 50), 3),
}
THING_CLASSES = {
    "person": ((210, 150, 120), 0),
    "vehicle": ((200, 30, 30), 10),
    "animal": ((140, 110, 70), 2),
    "food-things": ((240, 200, 40), 5),
}
# Raw label ids drawn for each class above in the other layouts: Cityscapes label ids (sky, road,
# building, terrain, vegetation, person, car, bicycle, traffic sign) and ISPRS Potsdam ids.
CITYSCAPES_IDS = {
    "sky": 23,
    "ground": 7,
    "wall": 11,
    "water": 22,
    "plant": 21,
    "person": 24,
    "vehicle": 26,
    "animal": 33,
    "food-things": 20,
}
POTSDAM_IDS = {
    "sky": 0,
    "ground": 2,
    "wall": 1,
    "water": 3,
    "plant": 3,
    "person": 4,
    "vehicle": 4,
    "animal": 5,
    "food-things": 5,
}


def fine_id_for(coarse_name):
    """The first fine id that maps to a coarse class, so labels look like real stuffthingmaps."""
    coarse = COCOSTUFF27.class_names.index(coarse_name)
    return int(np.flatnonzero(COCOSTUFF27.lut[:255] == coarse)[0])


def _texture(height, width, period, rng):
    if period == 0:
        return np.zeros((height, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi)
    return (np.sin(2 * np.pi * (xx + yy) / (2 * period) + phase) * 25).astype(np.float32)


def make_scene(height, width, rng, border=4, label_of=fine_id_for):
    """(RGB uint8 image, label uint8) of one scene; ``label_of(name)`` is the raw id drawn for a class."""
    image = np.zeros((height, width, 3), np.float32)
    label = np.zeros((height, width), np.uint8)

    def paint(mask, name, colour, period):
        shade = np.array(colour, np.float32) * rng.uniform(0.85, 1.15)
        image[mask] = shade + _texture(height, width, period, rng)[mask][:, None]
        label[mask] = label_of(name)

    horizon = int(height * rng.uniform(0.3, 0.5))
    floor = int(height * rng.uniform(0.6, 0.8))
    rows = np.arange(height)[:, None] * np.ones((1, width), bool)
    middle = str(rng.choice(["wall", "water", "plant"]))
    paint(rows < horizon, "sky", *STUFF_CLASSES["sky"])
    paint((rows >= horizon) & (rows < floor), middle, *STUFF_CLASSES[middle])
    paint(rows >= floor, "ground", *STUFF_CLASSES["ground"])
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(rng.integers(1, 4)):
        name = str(rng.choice(list(THING_CLASSES)))
        cy, cx = rng.uniform(0.3, 0.9) * height, rng.uniform(0.1, 0.9) * width
        size = rng.uniform(0.08, 0.2) * min(height, width)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < size**2
        else:
            mask = (abs(yy - cy) < size) & (abs(xx - cx) < size * 0.6)
        paint(mask, name, *THING_CLASSES[name])
    image += rng.normal(0, 6, image.shape)
    label[:border] = 255
    label[:, :border] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_synthetic_cocostuff(
    root, num_train=16, num_val=8, sizes=((320, 256), (288, 352), (240, 240)), seed=0, write_lists=True
):
    """Write scenes under ``root`` in the COCO-Stuff layout; returns {split: [ids]}.

    ``sizes`` are (width, height) cycled over the images.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = {}
    counter = 1
    for split, count in (("train", num_train), ("val", num_val)):
        folder = split_folder(split)
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        ids[split] = []
        for index in range(count):
            width, height = sizes[index % len(sizes)]
            image, label = make_scene(height, width, rng)
            image_id = f"{counter:012d}"
            counter += 1
            Image.fromarray(image).save(root / "images" / folder / f"{image_id}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / folder / f"{image_id}.png")
            ids[split].append(image_id)
        if write_lists:
            list_file = root / "curated" / folder / SPLIT_LIST_NAME
            list_file.parent.mkdir(parents=True, exist_ok=True)
            list_file.write_text("".join(f"{i}\n" for i in ids[split]))
    return ids


def write_synthetic_cityscapes(
    root, num_train=4, num_val=2, size=(448, 224), seed=0, cities=(("aachen", "bochum"), ("frankfurt", "lindau"))
):
    """Scenes in the Cityscapes layout (leftImg8bit/, gtFine/ *_labelIds.png); returns {split: [ids]}.

    ``size`` is (width, height); ``cities`` gives the train and val city folders, filled in turn.
    Labels hold label ids 7..33 for the drawn classes, 1 (ego vehicle) on the bottom rows and 255
    on the top and left border, so that both kinds of ignored pixels occur.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    ids = {}
    for (split, count), split_cities in zip((("train", num_train), ("val", num_val)), cities):
        ids[split] = []
        for index in range(count):
            city = split_cities[index % len(split_cities)]
            image_id = f"{city}_{index:06d}_{19 + index:06d}"
            image, label = make_scene(height, width, rng, label_of=CITYSCAPES_IDS.__getitem__)
            label[-max(1, height // 16) :] = 1
            for folder, name, array in (("leftImg8bit", IMAGE_SUFFIX, image), ("gtFine", LABEL_SUFFIX, label)):
                path = root / folder / split / city / f"{image_id}{name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            ids[split].append(image_id)
    return ids


def write_synthetic_potsdam(root, num_train=6, num_val=3, size=200, seed=0):
    """Tiles in STEGO's Potsdam layout (imgs/ID.mat with RGB + infrared, gt/ID.mat, split lists);
    returns {split: [ids]}. Ids are numbers, as in STEGO's files; labels hold ISPRS ids 0..5 and 255."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    ids = {}
    counter = 0
    for split, count in (("train", num_train), ("val", num_val)):
        ids[split] = []
        for _ in range(count):
            image, label = make_scene(size, size, rng, label_of=POTSDAM_IDS.__getitem__)
            infrared = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
            savemat(root / "imgs" / f"{counter}.mat", {"img": np.concatenate((image, infrared), axis=2)})
            savemat(root / "gt" / f"{counter}.mat", {"gt": label.astype(np.int32)})
            ids[split].append(str(counter))
            counter += 1
        (root / SPLIT_FILES[split]).write_text("".join(f"{i}\n" for i in ids[split]))
    everything = ids["train"] + ids["val"]
    (root / "all.txt").write_text("".join(f"{i}\n" for i in everything))
    (root / "unlabelled_train.txt").write_text("")
    return ids
