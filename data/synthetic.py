"""Synthetic scenes in the COCO-Stuff layout, for the demo and the tests.

Each scene has stuff-like textured bands (sky above, ground below, a wall or water in between)
and thing-like shapes (discs and boxes) on top, each class with its own colour and texture, so a
clustering method has something to find. Labels are stuffthingmaps-style fine ids with a border
of 255 (unlabelled); ids are chosen so every mapped coarse class is a real COCO-Stuff class.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from data.cocostuff import SPLIT_LIST_NAME, load_label_map, split_folder

# Coarse classes drawn (name -> (colour, texture period in pixels)); names from cocostuff27.json.
STUFF_CLASSES = {"sky": ((110, 160, 230), 0), "ground": ((120, 95, 60), 6), "wall": ((200, 195, 180), 14), "water": ((40, 90, 140), 4), "plant": ((50, 140, 50), 3)}
THING_CLASSES = {"person": ((210, 150, 120), 0), "vehicle": ((200, 30, 30), 10), "animal": ((140, 110, 70), 2), "food-things": ((240, 200, 40), 5)}


def fine_id_for(coarse_name):
    """The first fine id that maps to a coarse class, so labels look like real stuffthingmaps."""
    lut, names = load_label_map()
    coarse = names.index(coarse_name)
    return int(np.flatnonzero(lut[:255] == coarse)[0])


def _texture(height, width, period, rng):
    if period == 0:
        return np.zeros((height, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi)
    return (np.sin(2 * np.pi * (xx + yy) / (2 * period) + phase) * 25).astype(np.float32)


def make_scene(height, width, rng, border=4):
    """(RGB uint8 image, fine label uint8) of one scene."""
    image = np.zeros((height, width, 3), np.float32)
    label = np.zeros((height, width), np.uint8)

    def paint(mask, name, colour, period):
        shade = np.array(colour, np.float32) * rng.uniform(0.85, 1.15)
        image[mask] = shade + _texture(height, width, period, rng)[mask][:, None]
        label[mask] = fine_id_for(name)

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


def write_synthetic_cocostuff(root, num_train=16, num_val=8, sizes=((320, 256), (288, 352), (240, 240)), seed=0, write_lists=True):
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
