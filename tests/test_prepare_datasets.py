"""scripts/prepare_data.py, the recipes in configs/, and train.sh / val.sh for the new datasets.

Cityscapes' zips are built from a synthetic root the way the official ones are laid out
(``leftImg8bit/{train,val,test}/CITY/...`` plus license and README files); STEGO's potsdam.zip
holds a top ``potsdam/`` folder and is served by the loopback server.
"""

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from forked_python import run_script as run_bash
from helpers import save_dino, small_model
from scipy.io import savemat

import train as train_cli
from data.cityscapes import five_crop_boxes
from data.registry import DATASET_NAMES, get_dataset
from data.synthetic import write_synthetic_cityscapes, write_synthetic_potsdam
from scripts.prepare_data import main

ROOT = Path(__file__).resolve().parents[1]


def zip_tree(source, top, prefix=""):
    """Zip ``source/top/**`` as ``prefix/top/...`` with a couple of loose files, as the official zips."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{prefix}README", "readme")
        for path in sorted((source / top).rglob("*")):
            if path.is_file():
                archive.write(path, f"{prefix}{path.relative_to(source)}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cityscapes_zips(tmp_path_factory):
    source = tmp_path_factory.mktemp("cityscapes_source")
    write_synthetic_cityscapes(source, num_train=2, num_val=2)
    shutil.copytree(source / "leftImg8bit" / "val", source / "leftImg8bit" / "test")  # unlabelled test images
    zips = tmp_path_factory.mktemp("cityscapes_zips")
    (zips / "leftImg8bit_trainvaltest.zip").write_bytes(zip_tree(source, "leftImg8bit"))
    (zips / "gtFine_trainvaltest.zip").write_bytes(zip_tree(source, "gtFine"))
    return source, zips


def test_cityscapes_from_the_official_zips(tmp_path, cityscapes_zips, capsys):
    source, zips = cityscapes_zips
    root = tmp_path / "cityscapes"
    assert main(["cityscapes27", "--data-root", str(root), "--zips-dir", str(zips)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "OK: 0 problems in val, 0 in train (4 images checked)"
    assert "  note: the official val split has 500 images, this root has 2" in out
    for top in ("leftImg8bit", "gtFine"):
        assert sorted(p.name for p in (root / top).iterdir()) == ["train", "val"]  # test not unpacked
        for split in ("train", "val"):
            expected = sorted(p.relative_to(source) for p in (source / top / split).rglob("*.png"))
            assert sorted(p.relative_to(root) for p in (root / top / split).rglob("*.png")) == expected
    assert (zips / "gtFine_trainvaltest.zip").is_file()  # the user's download is left in place
    # STEGO's five crops of the train images, written once: the same pixels as cutting them on the fly
    spec = get_dataset("cityscapes27")
    assert len(list((root / "five_crops" / "train").rglob("*.png"))) == 2 * 5 * 2
    first = spec.split_ids(root, "train")[0]
    image, label = spec.read_pair(root, "train", first)
    spec.image_path(root, "train", first).write_bytes(b"gone")  # from now on only the crop files can serve it
    for crop, box in enumerate(five_crop_boxes(*image.size)):
        part, raw, source = spec.read_train_raw(root, "train", (first, crop))
        part_label = spec.map_label(raw, source)
        np.testing.assert_array_equal(np.array(part), np.array(image.crop(box)))
        np.testing.assert_array_equal(np.array(part_label), np.array(label.crop(box)))
    assert main(["cityscapes27", "--data-root", str(root), "--zips-dir", str(zips), "--splits", "val"]) == 0
    assert "already there, skipping" in capsys.readouterr().out


def test_cityscapes_missing_zip_is_one_clear_line(tmp_path, cityscapes_zips, capsys):
    _, zips = cityscapes_zips
    assert main(["cityscapes27", "--data-root", str(tmp_path / "root")]) == 2  # the user's input is missing
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: missing ")
    assert not (tmp_path / "root").exists()  # refused before anything is written
    assert "leftImg8bit_trainvaltest.zip (11GB) and gtFine_trainvaltest.zip (241MB)" in err
    assert "https://www.cityscapes-dataset.com/downloads/" in err and str(tmp_path / "root" / "downloads") in err
    only_images = tmp_path / "zips"
    only_images.mkdir()
    shutil.copy(zips / "leftImg8bit_trainvaltest.zip", only_images)
    assert main(["cityscapes27", "--data-root", str(tmp_path / "root"), "--zips-dir", str(only_images)]) == 2
    err = capsys.readouterr().err
    assert (
        "missing " + str(only_images / "gtFine_trainvaltest.zip") + ":" in err
        and "leftImg8bit_trainvaltest.zip (" not in err
    )


def test_potsdam_download_unpack_and_check(tmp_path, http_server, capsys):  # noqa: F811
    source = tmp_path / "source"
    write_synthetic_potsdam(source / "potsdam", num_train=3, num_val=2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((source / "potsdam").rglob("*")):
            archive.write(path, str(path.relative_to(source)))
    http_server.serve_bytes("potsdam.zip", buffer.getvalue())
    root = tmp_path / "potsdam"
    assert main(["potsdam3", "--data-root", str(root), "--base-url", http_server.url()]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK: 0 problems in val, 0 in train (5 images checked)"
    assert sorted(p.name for p in (root / "imgs").iterdir()) == [f"{i}.mat" for i in range(5)]
    assert (root / "labelled_test.txt").read_text() == "3\n4\n" and not (root / "downloads" / "potsdam.zip").exists()
    savemat(root / "gt" / "4.mat", {"gt": np.full((200, 200), 7, np.int32)})
    assert main(["potsdam3", "--data-root", str(root), "--check"]) == 1
    captured = capsys.readouterr()
    known = "ISPRS Potsdam class ids 0..5 and 255"
    assert f"  4 (label values [7] are not in the label map ({known})): {root / 'gt' / '4.mat'}\n" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(f"error: --data-root {root}: 1 problem in val, 0 in train")


def test_every_recipe_parses_and_holds_the_papers_values():
    parser = train_cli.build_parser()
    options = {action.dest for action in parser._actions}
    paper = {  # (lambda1, lambda2, t+, t-)
        "cocostuff171_vits8": (9.0, 0.61, 0.15, 0.15),
        "cocostuff171_vits16": (9.0, 0.61, 0.15, 0.15),
        "cityscapes27_vits8": (0.25, 0.3, 0.15, 0.25),
        "cityscapes27_vitb8": (0.38, 0.22, 0.2, 0.28),
    }
    for path in sorted((ROOT / "configs").glob("train_*.yaml")):
        values = yaml.safe_load(path.read_text())
        recipe = path.stem.removeprefix("train_")
        assert values.get("dataset", "cocostuff27") in DATASET_NAMES
        if recipe in paper:
            got = tuple(values[key] for key in ("neg_weight", "balance_weight", "pos_threshold", "neg_threshold"))
            assert got == paper[recipe], path.name
        unknown = {key for key in values if key not in options}
        # The ViT-B recipe names its backbone with train.py --backbone, added by the backbone work.
        assert unknown <= {"backbone"}, (path.name, unknown)
        assert "untuned" in path.read_text() or recipe in ("cocostuff27_vits16", "cocostuff27_vits8"), path.name


def run_script(script, *args, env=None, cwd=None):
    """``bash script args`` as a user runs it; its Python command lines forked (tests/forked_python.py)."""
    return run_bash(["bash", str(ROOT / script), *args], env=dict(os.environ, **(env or {})), cwd=cwd)


def test_train_sh_and_val_sh_on_cityscapes(tmp_path):
    data = tmp_path / "cityscapes"
    write_synthetic_cityscapes(data, num_train=1, num_val=1)
    dino = save_dino(small_model(), tmp_path / "dino.pth")
    run = tmp_path / "run"
    done = run_script(
        "train.sh",
        "cityscapes27",
        "vits8",
        "--backbone",
        "dino_vits16",  # the small test model's patch, over the recipe's backbone
        "--backbone-weights",
        str(dino),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--final-protocol",
        "none",
        "--output-dir",
        str(run),
        env={"DATA_ROOT": str(data)},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        config["dataset"] == "cityscapes27" and config["neg_weight"] == 0.25 and config["val_protocol"] == "center320"
    )
    checkpoints = tmp_path / "ckpts"
    checkpoints.mkdir()
    shutil.copy(run / "last_model.pth", checkpoints / "cityscapes27_vits8.pth")  # never looked up under that name
    done = run_script(
        "val.sh",
        "cityscapes27",
        "vits8",
        "--checkpoint",
        str(run / "last_model.pth"),
        "--expect-patch-size",
        "16",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        env={"DATA_ROOT": str(data), "CHECKPOINT_DIR": str(checkpoints)},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "outputs" / "val_cityscapes27_vits8_sliding.json").read_text())
    assert result["dataset"] == "cityscapes27" and result["protocol"] == "sliding" and result["num_images"] == 1
    done = run_script(
        "val.sh", "potsdam3", "vits8", env={"DATA_ROOT": str(data), "CHECKPOINT_DIR": str(checkpoints)}, cwd=tmp_path
    )
    assert done.returncode == 2 and last_line(done).startswith("error: ")
    assert "no released checkpoint exists for potsdam3 vits8" in last_line(done)
    done = run_script("train.sh", "potsdam3", "vitb8", env={"DATA_ROOT": str(data)}, cwd=tmp_path)
    assert done.returncode == 2 and last_line(done).startswith("error: no recipe for 'potsdam3 vitb8'")
    assert "cityscapes27 vitb8" in last_line(done)
    # val.sh takes every backbone train.sh does, by the same names (a DINOv3 ViT-S/16 here, dino_ spelled out
    # for DINO's), and refuses what is no backbone or no dataset before anything runs.
    env = {"DATA_ROOT": str(data), "CHECKPOINT_DIR": str(checkpoints)}
    done = run_script("val.sh", "cityscapes27", "dinov3_vits16", env=env, cwd=tmp_path)
    assert done.returncode == 2 and "no released checkpoint exists for cityscapes27 dinov3_vits16" in last_line(done)
    own = ["--checkpoint", str(run / "last_model.pth")]
    done = run_script("val.sh", "cityscapes27", "dino_vits8", *own, "--limit", "0", env=env, cwd=tmp_path)
    assert done.returncode == 2 and last_line(done).startswith("error: --limit"), done.stderr
    for dataset, arch, culprit in (("cityscapes27", "vitl32", "arch 'vitl32'"), ("coco", "vits8", "dataset 'coco'")):
        done = run_script("val.sh", dataset, arch, env=env, cwd=tmp_path)
        assert done.returncode == 2 and last_line(done).startswith(f"error: val.sh: unknown {culprit}"), done.stderr
    assert not (tmp_path / "outputs" / "val_cityscapes27_dinov3_vits16.json").exists()


def last_line(done):
    return done.stderr.strip().splitlines()[-1]
