"""The synthetic scene generator and a short run of demo.py."""

import json

import numpy as np
from PIL import Image

import demo
from data.registry import get_dataset
from data.synthetic import write_synthetic_cocostuff


def test_generator_layout_labels_and_determinism(tmp_path):
    ids = write_synthetic_cocostuff(tmp_path / "a", num_train=2, num_val=3, sizes=((320, 256), (200, 300)), seed=4)
    spec = get_dataset("cocostuff27")
    assert spec.split_ids(tmp_path / "a", "val") == ids["val"] and len(ids["train"]) == 2
    seen = set()
    for image_id in ids["val"]:
        image = Image.open(tmp_path / "a/images/val2017" / f"{image_id}.jpg")
        label = spec.read_label(tmp_path / "a", "val", image_id)  # raises on unknown values
        assert label.shape == (image.height, image.width)
        assert (label[:4] == 255).all() and (label[:, :4] == 255).all()
        values = set(np.unique(label).tolist()) - {255}
        assert len(values) >= 3  # stuff bands and at least one thing
        seen |= values
    assert {12 + 11, 21} <= seen  # sky and ground are in every scene
    write_synthetic_cocostuff(tmp_path / "b", num_train=2, num_val=3, sizes=((320, 256), (200, 300)), seed=4)
    for image_id in ids["val"]:
        assert (tmp_path / "a/annotations/val2017" / f"{image_id}.png").read_bytes() == (
            tmp_path / "b/annotations/val2017" / f"{image_id}.png"
        ).read_bytes()


def test_demo_short_run(tmp_path, capsys):
    code = demo.main(
        [
            "--output-dir",
            str(tmp_path),
            "--train-images",
            "8",
            "--val-images",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["random_backbone"] is (not demo.release_cache_path("dino_vits16").is_file())
    assert 0 <= metrics["acc"] <= 100 and metrics["num_images"] == 1
    assert (tmp_path / "pictures" / "confusion.png").is_file()
    assert len(list((tmp_path / "pictures").glob("0*.png"))) == 1
    assert "demo done: pixel Acc" in capsys.readouterr().out
