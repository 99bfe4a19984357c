"""Every dataset through the entry points on synthetic data: eval.py with each protocol, two training
epochs with train.py, predict.py --dataset, and one clear error for a wrong dataset or bad data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_released, small_model
from PIL import Image

import eval as eval_cli
import predict as predict_cli
import train as train_cli
from data.registry import get_dataset
from data.synthetic import write_synthetic_cityscapes, write_synthetic_cocostuff, write_synthetic_potsdam
from engine.evaluation import PROTOCOLS
from engine.visualize import CAPTION_HEIGHT

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("cocostuff171", "cityscapes27", "potsdam3")
NUM_VAL = 2


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One small synthetic root per dataset (COCO-Stuff-171 reads the COCO-Stuff layout)."""
    base = tmp_path_factory.mktemp("datasets")
    write_synthetic_cocostuff(base / "coco", num_train=8, num_val=NUM_VAL, sizes=((240, 240), (200, 300)))
    write_synthetic_cityscapes(base / "cityscapes", num_train=2, num_val=NUM_VAL)
    write_synthetic_potsdam(base / "potsdam", num_train=8, num_val=NUM_VAL)
    return {"cocostuff171": base / "coco", "cityscapes27": base / "cityscapes", "potsdam3": base / "potsdam"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        name: save_released(small_model(num_classes=get_dataset(name).num_classes), folder / f"{name}.pth")
        for name in DATASETS
    }


def run_eval(tmp_path, root, checkpoint, *flags):
    out = tmp_path / "result.json"
    code = eval_cli.main(
        [
            "--data-root",
            str(root),
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
            "--output-json",
            str(out),
            *flags,
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("protocol", [None, *PROTOCOLS])
@pytest.mark.parametrize("name", DATASETS)
def test_eval_each_dataset_and_protocol(tmp_path, roots, checkpoints, name, protocol):
    spec = get_dataset(name)
    flags = ["--dataset", name] + (
        ["--protocol", protocol] if protocol else ["--save-visuals", str(tmp_path / "pictures"), "--num-visuals", "1"]
    )
    result = run_eval(tmp_path, roots[name], checkpoints[name], *flags)  # default --num-workers
    expected = protocol or {"cocostuff171": "sliding", "cityscapes27": "sliding", "potsdam3": "center320"}[name]
    assert result["dataset"] == name and result["protocol"] == expected and result["num_images"] == NUM_VAL
    confusion = np.array(result["confusion"])
    assert confusion.shape == (spec.num_classes, spec.num_classes)
    assert list(result["per_class_iou"]) == list(spec.class_names)
    grid = result["protocol_settings"]["score_size"]
    if expected == "sliding":
        assert grid == ([320, 640] if name == "cityscapes27" else [320, 320])  # Cityscapes keeps its 2:1 aspect
    # every image is scored on the grid; the ignored border (and Cityscapes' ego-vehicle rows) is not counted
    assert 0.8 * NUM_VAL * grid[0] * grid[1] < confusion.sum() < NUM_VAL * grid[0] * grid[1]
    tp = sum(confusion[c, int(k)] for k, c in result["assignment"].items() if c >= 0)
    assert result["acc"] == pytest.approx(100 * tp / confusion.sum())
    if protocol is None:  # pictures in the dataset's own colours
        panel = next(
            path
            for path in (tmp_path / "pictures").glob("*.png")
            if path.stem not in ("legend", "confusion", "per_class_iou")
        )
        pixels = np.array(Image.open(panel).convert("RGB"))[CAPTION_HEIGHT:]
        width = pixels.shape[1] // 3
        ground_truth = {tuple(colour) for colour in pixels[:, width : 2 * width].reshape(-1, 3)}
        assert ground_truth <= {tuple(colour) for colour in spec.palette} | {(0, 0, 0)} and len(ground_truth) > 2


def test_sliding_on_a_full_size_cityscapes_image(tmp_path):
    write_synthetic_cityscapes(tmp_path / "data", num_train=0, num_val=1, size=(2048, 1024))
    checkpoint = save_released(small_model(), tmp_path / "ckpt.pth")
    result = run_eval(tmp_path, tmp_path / "data", checkpoint, "--dataset", "cityscapes27", "--num-workers", "0")
    assert result["num_images"] == 1 and result["protocol"] == "sliding"
    assert 0.8 * 320 * 640 < np.array(result["confusion"]).sum() < 320 * 640


def test_wrong_dataset_and_bad_data_are_one_clear_line(tmp_path, roots, checkpoints, capsys):
    common = ["--device", "cpu", "--num-workers", "0"]
    code = eval_cli.main(
        [
            "--dataset",
            "potsdam3",
            "--data-root",
            str(roots["potsdam3"]),
            "--checkpoint",
            str(checkpoints["cityscapes27"]),
            *common,
        ]
    )
    assert code == 2 and "the model has 27 clusters but --dataset potsdam3 has 3 classes" in capsys.readouterr().err
    data = tmp_path / "cityscapes"
    ids = write_synthetic_cityscapes(data, num_train=0, num_val=2)["val"]
    spec = get_dataset("cityscapes27")
    label_file = spec.label_path(data, "val", ids[0])
    label = np.array(Image.open(label_file))
    label[0, 0] = 34
    Image.fromarray(label).save(label_file)
    code = eval_cli.main(
        [
            "--dataset",
            "cityscapes27",
            "--data-root",
            str(data),
            "--checkpoint",
            str(checkpoints["cityscapes27"]),
            "--device",
            "cpu",
        ]
    )  # default --num-workers: the error comes from a worker
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    errors = [line for line in printed.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in printed
    assert errors[0].endswith(
        f"error: {label_file}: label values [34] are not in the label map (Cityscapes label ids 0..33 and 255)"
    )
    (data / "gtFine" / "val" / "lindau").rename(tmp_path / "moved")
    code = eval_cli.main(
        [
            "--dataset",
            "cityscapes27",
            "--data-root",
            str(data),
            "--checkpoint",
            str(checkpoints["cityscapes27"]),
            *common,
        ]
    )
    assert code == 2 and "gtFine/val/lindau: city folder missing" in capsys.readouterr().err


def read_log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", DATASETS)
def test_two_training_epochs(tmp_path, roots, dino_file, name, capsys):
    spec = get_dataset(name)
    out = tmp_path / "run"
    config = {
        "cocostuff171": "train_cocostuff171_vits16.yaml",
        "cityscapes27": "train_cityscapes27_vits8.yaml",
        "potsdam3": "train_potsdam3_vits8.yaml",
    }[name]
    args = [
        "--config",
        str(ROOT / "configs" / config),
        "--data-root",
        str(roots[name]),
        "--backbone-weights",
        str(dino_file),
        "--backbone",
        "dino_vits16",  # the small test model's patch, over the recipe's backbone
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--num-workers",
        "2",
        "--device",
        "cpu",
        "--log-every",
        "2",
    ]
    if name != "cityscapes27":
        args += ["--final-protocol", "none", "--val-limit", "1"]  # 171 classes make CPU evaluation slow
    assert train_cli.main(args) == 0
    rows = read_log(out)
    epochs = [row for row in rows if row["kind"] == "val"]
    assert [row["epoch"] for row in epochs] == [0, 1]
    assert all(np.isfinite(row["miou"]) and np.isfinite(row["probe_miou"]) for row in epochs)
    assert list(epochs[0]["per_class_iou"]) == list(spec.class_names)
    state = torch.load(out / "last_model.pth", weights_only=True)
    assert state["classifier"]["weight"].shape[0] == spec.num_classes and state["config"]["dataset"] == name
    steps = [row["step"] for row in rows if row["kind"] == "train"]
    items = len(spec.train_items(roots[name], "train"))  # Cityscapes: five crops of each of its 2 images
    assert steps[-1] == 2 * (items // 4)
    protocol = epochs[1]["protocol"]
    limit = ["--limit", "1"] if name != "cityscapes27" else []
    result = run_eval(
        tmp_path,
        roots[name],
        out / "last_model.pth",
        "--dataset",
        name,
        "--protocol",
        protocol,
        "--num-workers",
        "0",
        *limit,
    )
    assert result["miou"] == pytest.approx(epochs[1]["miou"])  # the same weights and protocol as the last validation
    if name == "cityscapes27":
        assert [row["protocol"] for row in rows if row["kind"] == "final"] == ["sliding"]
        capsys.readouterr()
        # Another dataset's layout under the same root: found by the split scan, before any model is loaded.
        assert train_cli.main([*args, "--resume", "--epochs", "3", "--dataset", "potsdam3"]) == 2
        assert "potsdam" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["cocostuff171", "cityscapes27"])
def test_predict_with_dataset_palette_and_names(tmp_path, roots, checkpoints, name):
    spec = get_dataset(name)
    cluster_to_class = np.random.default_rng(0).permutation(spec.num_classes)
    cluster_to_class[0] = -1  # a cluster matched to no class is drawn black
    assignment = tmp_path / "eval.json"
    assignment.write_text(json.dumps({"assignment": {str(k): int(c) for k, c in enumerate(cluster_to_class)}}))
    folder = roots[name] / ("images/val2017" if name == "cocostuff171" else "leftImg8bit/val/frankfurt")
    image = sorted(folder.iterdir())[0]
    out = tmp_path / "pred"
    flags = [
        "--dataset",
        name,
        "--checkpoint",
        str(checkpoints[name]),
        "--input",
        str(image),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--assignment",
        str(assignment),
    ]
    assert predict_cli.main(flags) == 0
    ids = np.array(Image.open(out / f"{image.stem}_clusters.png"))
    colour = np.array(Image.open(out / f"{image.stem}_color.png"))
    matched = cluster_to_class[ids] >= 0
    assert (colour[matched] == spec.palette[cluster_to_class[ids][matched]]).all() and (colour[~matched] == 0).all()
    assert ids.shape == Image.open(image).size[::-1]
    assert (out / "legend.png").is_file()
    if name == "cocostuff171":  # 171 clusters do not fit the default (COCO-Stuff-27) palette
        assert (
            predict_cli.main(
                [
                    "--checkpoint",
                    str(checkpoints[name]),
                    "--input",
                    str(image),
                    "--output-dir",
                    str(out),
                    "--device",
                    "cpu",
                ]
            )
            == 2
        )
