"""scripts/prepare_cocostuff.py: download + unpack from a loopback server, damaged zips, --check.

The zips are built from the golden COCO-Stuff fixture (6 val and 8 train images with fine labels),
laid out as the official ones are: ``val2017/ID.jpg`` in ``val2017.zip`` and ``{train,val}2017/ID.png``
in the stuffthingmaps zip.
"""

import io
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from data.cocostuff import DataError, read_split_ids
from scripts import prepare_cocostuff
from scripts.prepare_cocostuff import LABELS_ZIP, install_curated_lists, main, unpack_folder


@pytest.fixture
def fixture_root(golden_dir):
    return golden_dir / "cocostuff"


def zip_folders(source, folders, suffix):
    """Zip ``source/<folder>/*<suffix>`` as ``<folder>/<name>``, as the official zips hold them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:
            for path in sorted((source / folder).glob(f"*{suffix}")):
                archive.write(path, f"{folder}/{path.name}")
    return buffer.getvalue()


@pytest.fixture
def coco_server(http_server, fixture_root):  # noqa: F811
    """Serves the three zips under one base URL, the layout ``--base-url`` expects."""
    for folder in ("val2017", "train2017"):
        http_server.serve_bytes(f"zips/{folder}.zip", zip_folders(fixture_root / "images", [folder], ".jpg"))
    http_server.serve_bytes(LABELS_ZIP, zip_folders(fixture_root / "annotations", ["train2017", "val2017"], ".png"))
    return http_server


@pytest.fixture
def data_root(tmp_path, fixture_root):
    """An empty data root that only holds its own split lists (the fixture's few ids)."""
    root = tmp_path / "coco"
    shutil.copytree(fixture_root / "curated", root / "curated")
    return root


def same_tree(left, right, pattern):
    names = sorted(path.name for path in left.glob(pattern))
    return names == sorted(path.name for path in right.glob(pattern)) and all(
        (left / name).read_bytes() == (right / name).read_bytes() for name in names
    )


def test_prepare_downloads_and_unpacks_into_the_layout(coco_server, data_root, fixture_root, capsys):
    stale = data_root / "images" / ".val2017.unpacking"  # an unpack interrupted by an earlier run
    stale.mkdir(parents=True)
    (stale / "half.jpg").write_bytes(b"half")

    assert main(["--data-root", str(data_root), "--base-url", coco_server.url()]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK: 14 images")
    for folder in ("val2017", "train2017"):
        assert same_tree(data_root / "images" / folder, fixture_root / "images" / folder, "*.jpg")
        assert same_tree(data_root / "annotations" / folder, fixture_root / "annotations" / folder, "*.png")
    assert sorted(path.name for path in (data_root / "images").iterdir()) == ["train2017", "val2017"]
    assert not (data_root / "downloads").exists()
    assert len(coco_server.requests_for(LABELS_ZIP)) == 1  # one labels zip serves both splits

    served = len(coco_server.requests)
    assert main(["--data-root", str(data_root), "--base-url", coco_server.url()]) == 0
    assert "already there" in capsys.readouterr().out
    assert len(coco_server.requests) == served


def test_prepare_only_val_keeping_the_zips(coco_server, data_root):
    assert main(["--data-root", str(data_root), "--splits", "val", "--keep-zips", "--base-url", coco_server.url()]) == 0
    assert sorted(path.name for path in (data_root / "downloads").iterdir()) == [LABELS_ZIP, "val2017.zip"]
    assert (data_root / "annotations" / "val2017").is_dir()
    assert not (data_root / "annotations" / "train2017").exists()
    assert not (data_root / "images" / "train2017").exists()
    assert coco_server.requests_for("zips/train2017.zip") == []


def test_a_truncated_zip_is_rejected(coco_server, data_root, fixture_root, capsys):
    whole = zip_folders(fixture_root / "images", ["val2017"], ".jpg")
    coco_server.serve_bytes("zips/val2017.zip", whole[: len(whole) // 2])
    assert main(["--data-root", str(data_root), "--splits", "val", "--base-url", coco_server.url()]) == 1
    message = capsys.readouterr().err
    zip_path = data_root / "downloads" / "val2017.zip"
    assert str(zip_path) in message and "Delete it" in message
    assert zip_path.exists()  # left for the user to look at, as the message says
    assert not (data_root / "images" / "val2017").exists()
    assert not (data_root / "images" / ".val2017.unpacking").exists()


def test_a_zip_with_a_crc_error_is_rejected(tmp_path):
    content = bytes(range(256)) * 64
    zip_path = tmp_path / "val2017.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("val2017/000000000001.jpg", content)
    data = bytearray(zip_path.read_bytes())
    data[data.index(content) + 100] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    target = tmp_path / "images" / "val2017"
    with pytest.raises(DataError, match="damaged") as info:
        unpack_folder(zip_path, "val2017", target, quiet=True)
    assert str(zip_path) in str(info.value) and "Delete it" in str(info.value)
    assert not target.exists() and not (tmp_path / "images" / ".val2017.unpacking").exists()


def test_a_zip_without_the_split_folder_is_rejected(tmp_path):
    zip_path = tmp_path / "other.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("somewhere/else.jpg", b"jpg")
    with pytest.raises(DataError, match="no files under val2017/"):
        unpack_folder(zip_path, "val2017", tmp_path / "val2017", quiet=True)


def test_shipped_curated_lists_are_verified_and_copied(tmp_path, monkeypatch, capsys):
    root = tmp_path / "coco"
    install_curated_lists(root, ["val", "train"], quiet=True)
    for split, count in (("val", 2175), ("train", 49629)):
        own = root / "curated" / f"{split}2017" / prepare_cocostuff.SPLIT_LIST_NAME
        assert own.read_bytes() == (prepare_cocostuff.SHIPPED_CURATED_DIR / f"{split}2017" / own.name).read_bytes()
        assert len(read_split_ids(root, split)) == count

    damaged = tmp_path / "damaged"
    (damaged / "val2017").mkdir(parents=True)
    (damaged / "val2017" / prepare_cocostuff.SPLIT_LIST_NAME).write_text("000000000001\n")
    monkeypatch.setattr(prepare_cocostuff, "SHIPPED_CURATED_DIR", damaged)
    with pytest.raises(DataError, match="de66cfb9"):
        install_curated_lists(tmp_path / "other", ["val"])


def test_check_a_good_root(fixture_root, capsys):
    assert main(["--data-root", str(fixture_root), "--check"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK: 14 images")


def test_check_names_missing_and_bad_files(tmp_path, fixture_root, capsys):
    root = tmp_path / "coco"
    shutil.copytree(fixture_root, root)
    val_ids = read_split_ids(root, "val")
    (root / "annotations" / "val2017" / f"{val_ids[3]}.png").unlink()
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(root / "annotations" / "val2017" / f"{val_ids[4]}.png")
    (root / "annotations" / "val2017" / f"{val_ids[5]}.png").write_bytes(b"not a png")
    (root / "images" / "val2017" / f"{val_ids[5]}.jpg").unlink()

    assert main(["--data-root", str(root), "--splits", "val", "--check"]) == 1
    report = capsys.readouterr().out
    assert f"missing images: 1 (e.g. {val_ids[5]})" in report
    assert f"missing labels: 1 (e.g. {val_ids[3]})" in report
    assert f"{val_ids[4]} (values [200]" in report and f"{val_ids[5]} (unreadable" in report
    assert "FAILED" in report

    assert main(["--data-root", str(root), "--splits", "val", "--check", "--check-limit", "3"]) == 0
    assert "the first 3 of 6 ids" in capsys.readouterr().out


def test_check_of_a_missing_root_is_an_error(tmp_path, capsys):
    assert main(["--data-root", str(tmp_path / "nowhere"), "--check"]) == 2  # a bad option, not a finding
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
