"""TensorBoard logging: the JsonlLog rows as scalars, validation pictures, and train.py's event files."""

import json

import numpy as np
import pytest
import torch
from helpers import save_dino, small_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train as train_cli
from data.synthetic import write_synthetic_cocostuff
from engine.tensorboard import TensorboardLog
from engine.visualize import VisualCollector
from utils.log import JsonlLog, LogGroup


def events(log_dir):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_rows_become_scalars_and_pictures(tmp_path):
    board = TensorboardLog(tmp_path / "tb")
    log = LogGroup(JsonlLog(tmp_path / "log.jsonl"), board)
    log.write(kind="train", epoch=0, step=5, lr=5e-4, total=1.5, pos=0.25)
    log.write(
        kind="val",
        epoch=0,
        step=10,
        protocol="resize320",
        miou=12.5,
        per_class_iou={"sky": 40.0, "wall": 3.0},
        train={"total": 1.25},
    )
    log.write(kind="final", protocol="sliding", acc=33.0)
    collector = VisualCollector(2)
    label = torch.zeros(16, 16, dtype=torch.uint8)
    for index in range(3):
        collector({"id": f"img{index}", "image": torch.zeros(3, 16, 16), "label": label}, torch.full((16, 16), index))
    board.write_pictures(collector, np.arange(27), step=10)
    board.close()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["train", "val", "final"]  # the same call fed both logs
    found = events(tmp_path / "tb")
    scalars = {tag: [(e.step, e.value) for e in found.Scalars(tag)] for tag in found.Tags()["scalars"]}
    assert scalars["train/lr"] == [(5, pytest.approx(5e-4))] and scalars["train/total"] == [(5, 1.5)]
    assert scalars["val/miou"] == [(10, 12.5)] and scalars["val/per_class_iou/sky"] == [(10, 40.0)]
    assert scalars["val/train/total"] == [(10, 1.25)]
    assert scalars["final/acc"] == [(10, 33.0)]  # no step of its own: the last one seen
    assert not any("protocol" in tag for tag in scalars)
    assert sorted(found.Tags()["images"]) == ["val/img0", "val/img1"]
    (picture,) = found.Images("val/img1")
    assert picture.step == 10 and picture.width == 3 * 16  # image | ground truth | prediction


def test_training_writes_tensorboard_beside_the_jsonl(tmp_path):
    root = tmp_path / "data"
    write_synthetic_cocostuff(root, num_train=4, num_val=2, sizes=((256, 240), (240, 256)))
    dino = save_dino(small_model(seed=3), tmp_path / "dino.pth")
    out = tmp_path / "run"
    assert (
        train_cli.main(
            [
                "--data-root",
                str(root),
                "--backbone-weights",
                str(dino),
                "--output-dir",
                str(out),
                "--epochs",
                "2",
                "--batch-size",
                "2",
                "--num-workers",
                "0",
                "--device",
                "cpu",
                "--log-every",
                "1",
            ]
        )
        == 0
    )
    found = events(out / "tensorboard")
    scalars = found.Tags()["scalars"]
    for tag in (
        "train/total",
        "train/pos",
        "train/neg",
        "train/balance",
        "train/probe",
        "train/lr",
        "val/acc",
        "val/miou",
        "val/probe_acc",
        "val/probe_miou",
        "val/per_class_iou/sky",
    ):
        assert tag in scalars, tag
    val_rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert [e.value for e in found.Scalars("val/miou")] == pytest.approx([row["miou"] for row in val_rows])
    assert [e.step for e in found.Scalars("val/miou")] == [row["step"] for row in val_rows]
    images = found.Tags()["images"]
    assert len(images) == 2  # the two validation images, drawn every epoch
    assert [e.step for e in found.Images(images[0])] == [row["step"] for row in val_rows]
