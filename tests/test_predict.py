"""predict.py on folders of synthetic images: outputs, sizes, assignment colouring and bad inputs."""

import json
import shutil

import numpy as np
import pytest
from helpers import save_released, small_model
from PIL import Image

import predict as predict_cli
from data.synthetic import write_synthetic_cocostuff
from engine.visualize import PALETTE

SIZES = ((320, 256), (200, 300), (240, 240))  # (width, height); one side under the 224 window


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=0, num_val=3, sizes=SIZES)
    return root / "images" / "val2017"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_released(small_model(), tmp_path_factory.mktemp("ckpt") / "small.pth")


def run(checkpoint, inputs, out_dir, *flags):
    return predict_cli.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            *map(str, inputs),
            "--output-dir",
            str(out_dir),
            "--device",
            "cpu",
            *flags,
        ]
    )


def read(path):
    with Image.open(path) as image:
        image.load()
        return image


def test_folder_gets_three_pngs_per_image(tmp_path, image_dir, checkpoint):
    out = tmp_path / "out"
    assert run(checkpoint, [image_dir], out) == 0
    stems = sorted(p.stem for p in image_dir.glob("*.jpg"))
    for stem, size in zip(stems, SIZES):
        clusters = read(out / f"{stem}_clusters.png")
        colour = read(out / f"{stem}_color.png")
        blended = read(out / f"{stem}_overlay.png")
        assert clusters.size == colour.size == blended.size == size
        assert clusters.mode == "P" and colour.mode == "RGB"
        ids = np.array(clusters)
        assert ids.max() < 27
        # Without an assignment, colours are the palette entries of the cluster ids.
        assert (np.array(colour) == PALETTE[ids]).all()
    assert read(out / "legend.png").size[1] > 27 * 16


def test_assignment_colours_by_matched_class(tmp_path, image_dir, checkpoint):
    cluster_to_class = np.roll(np.arange(27), 5)
    cluster_to_class[26] = -1  # a cluster matched to no class is drawn as ignore
    assignment = tmp_path / "eval.json"
    assignment.write_text(json.dumps({"assignment": {str(k): int(c) for k, c in enumerate(cluster_to_class)}}))
    out = tmp_path / "out"
    first = sorted(image_dir.glob("*.jpg"))[0]
    assert run(checkpoint, [first], out, "--assignment", str(assignment), "--no-flip") == 0
    ids = np.array(read(out / f"{first.stem}_clusters.png"))
    colour = np.array(read(out / f"{first.stem}_color.png"))
    matched = cluster_to_class[ids] >= 0
    assert (colour[matched] == PALETTE[cluster_to_class[ids][matched]]).all()
    assert (colour[~matched] == 0).all()
    assert (np.array(read(out / f"{first.stem}_clusters.png").convert("RGB")) == colour).all()
    assert (out / "legend.png").is_file()


def test_corrupt_image_is_reported_and_skipped(tmp_path, image_dir, checkpoint, capsys):
    folder = tmp_path / "images"
    shutil.copytree(image_dir, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    assert run(checkpoint, [folder], out) == 1
    printed = capsys.readouterr()
    assert "not segmented" in printed.out and "broken.jpg: cannot read the image" in printed.out
    assert "broken.jpg" in printed.err.splitlines()[-1]
    assert len(list(out.glob("*_color.png"))) == 3 and not (out / "broken_color.png").exists()


def test_bad_inputs_are_one_clear_line(tmp_path, checkpoint, capsys):
    assert run(checkpoint, [tmp_path / "nowhere.jpg"], tmp_path / "out") == 2
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(checkpoint, [empty], tmp_path / "out") == 2
    assert "no images found" in capsys.readouterr().err
    image = tmp_path / "a.png"
    Image.new("RGB", (230, 230)).save(image)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"assignment": {"0": 1}}))
    assert run(checkpoint, [image], tmp_path / "out", "--assignment", str(bad_json)) == 2
    assert "--assignment" in capsys.readouterr().err
