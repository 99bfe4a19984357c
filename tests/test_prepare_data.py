"""The data tool: scripts/prepare_data.py --check on every dataset, its alias scripts/prepare_cocostuff.py,
split lists as people write them, and COCO-Stuff's download + unpack from a loopback server.

The --check tests damage tiny synthetic roots (data/synthetic.py) the same four ways for every dataset.
The zips are built from the golden COCO-Stuff fixture (6 val and 8 train images with fine labels),
laid out as the official ones are: ``val2017/ID.jpg`` in ``val2017.zip`` and ``{train,val}2017/ID.png``
in the stuffthingmaps zip.
"""

import io
import re
import shutil
import zipfile

import numpy as np
import pytest
from helpers import small_disk
from PIL import Image
from scipy.io import savemat

from data.registry import get_dataset
from data.spec import DataError, read_split_list
from data.synthetic import write_synthetic_cityscapes, write_synthetic_cocostuff, write_synthetic_potsdam
from scripts import prepare_cocostuff, prepare_data
from scripts.prepare_data import COCO_LABELS_ZIP, install_curated_lists, unpack_folder

WRITERS = {
    "cocostuff27": lambda root: write_synthetic_cocostuff(root, num_train=2, num_val=5, sizes=((64, 48),)),
    "cocostuff171": lambda root: write_synthetic_cocostuff(root, num_train=2, num_val=5, sizes=((64, 48),)),
    "cityscapes27": lambda root: write_synthetic_cityscapes(root, num_train=2, num_val=5, size=(64, 32)),
    "potsdam3": lambda root: write_synthetic_potsdam(root, num_train=2, num_val=5, size=32),
}
# A raw label value outside each dataset's map (11 is a fine id COCO-Stuff-27 maps and -171 does not).
UNKNOWN_VALUE = {"cocostuff27": 200, "cocostuff171": 11, "cityscapes27": 40, "potsdam3": 7}


def write_label(spec, path, label):
    if path.suffix == ".mat":
        savemat(path, {"gt": label.astype(np.int32)})
    else:
        Image.fromarray(label).save(path)


def damage(spec, root, ids):
    """The first four val ids damaged: an image that opens but does not decode, a label value outside
    the map, a label of another size than its image, a missing label. Returns the expected lines."""
    image_file = spec.image_path(root, "val", ids[0])
    image_file.write_bytes(image_file.read_bytes()[:300])
    label_file = spec.label_path(root, "val", ids[1])
    label = np.array(spec.read_raw_label(label_file))
    label[5, 5] = UNKNOWN_VALUE[spec.name]
    write_label(spec, label_file, label)
    resized = spec.label_path(root, "val", ids[2])
    write_label(spec, resized, np.zeros((10, 12), np.uint8))
    image = spec.read_image(root, "val", ids[2])
    missing = spec.label_path(root, "val", ids[3])
    missing.unlink()
    return [
        f"  {ids[0]} (unreadable image (",
        f"  {ids[1]} (label values [{UNKNOWN_VALUE[spec.name]}] are not in the label map (",
        f"  {ids[2]} (label is 12x10 but its image is {image.width}x{image.height}): {resized}",
        f"  {ids[3]} (label missing): {missing}",
    ], [image_file, label_file]


@pytest.mark.parametrize("name", list(WRITERS))
def test_check_finds_each_kind_of_problem_file_by_file(name, tmp_path, capsys):
    spec = get_dataset(name)
    root = tmp_path / name
    ids = WRITERS[name](root)["val"]
    assert prepare_data.main([name, "--data-root", str(root), "--check"]) == 0
    captured = capsys.readouterr()
    val, train = spec.split_name("val"), spec.split_name("train")
    assert captured.out.splitlines()[-1] == f"OK: 0 problems in {val}, 0 in {train} (7 images checked)"

    expected, paths = damage(spec, root, ids)
    assert prepare_data.main([name, "--data-root", str(root), "--check"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for start, path in zip(expected, [*paths, None, None]):
        line = next((line for line in lines if line.startswith(start)), None)
        assert line is not None, (start, captured.out)
        assert path is None or line.endswith(f"): {path}"), line
    assert f"{spec.name} {val}: FAILED, 4 problems in 5 ids" in lines
    assert f"{spec.name} {train}: OK, no problems in 2 ids" in lines
    assert "Traceback" not in captured.err
    assert (
        captured.err.strip()
        .splitlines()[-1]
        .startswith(f"error: --data-root {root}: 4 problems in {val}, 0 in {train} (listed above); replace the files")
    )
    # The damaged ids past a --check-limit are not read.
    assert (
        prepare_data.main([name, "--data-root", str(root), "--check", "--check-limit", "1", "--splits", "train"]) == 0
    )
    out = capsys.readouterr().out
    assert f"{spec.name} {train}: checking the first 1 of 2 ids of {spec.split_source(root, 'train')}" in out


def test_the_dataset_is_positional_or_dataset_as_in_train_and_eval(tmp_path, capsys):
    """docs/datasets.md writes `--dataset`, the README the positional DATASET: both work, once."""
    root = str(tmp_path / "missing")
    assert prepare_data.main(["--dataset", "potsdam3", "--data-root", root, "--check"]) == 2
    assert "imgs/" in capsys.readouterr().err  # Potsdam-3's layout is the one checked
    for argv in ([], ["cocostuff27", "--dataset", "potsdam3"]):
        with pytest.raises(SystemExit) as done:
            prepare_data.main([*argv, "--data-root", root])
        assert done.value.code == 2
        assert "give the dataset once, as DATASET or --dataset" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cocostuff27", "potsdam3"])
def test_check_names_a_missing_image(name, tmp_path, capsys):
    """Datasets with split lists can list an image that is not there (Cityscapes finds its ids in
    the image folders)."""
    spec = get_dataset(name)
    ids = WRITERS[name](tmp_path)["val"]
    image_file = spec.image_path(tmp_path, "val", ids[1])
    image_file.unlink()
    assert prepare_data.main([name, "--data-root", str(tmp_path), "--splits", "val", "--check"]) == 1
    assert f"  {ids[1]} (image missing): {image_file}\n" in capsys.readouterr().out


def test_check_names_a_colour_label_where_label_ids_belong(tmp_path, capsys):
    spec = get_dataset("cityscapes27")
    ids = WRITERS["cityscapes27"](tmp_path)["val"]
    label_file = spec.label_path(tmp_path, "val", ids[2])
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(label_file)
    assert prepare_data.main(["cityscapes27", "--data-root", str(tmp_path), "--splits", "val", "--check"]) == 1
    out = capsys.readouterr().out
    assert f"  {ids[2]} (bad label: expected a single-channel labelIds PNG, got mode RGB): {label_file}\n" in out


def test_prepare_cocostuff_is_prepare_data_cocostuff27(tmp_path, capsys):
    def both(*args):
        results = []
        for main, prefix in ((prepare_data.main, ["cocostuff27"]), (prepare_cocostuff.main, [])):
            try:
                code = main([*prefix, *map(str, args)])
            except SystemExit as usage_error:  # argparse's exit, with the parser's one error line
                code = usage_error.code
            captured = capsys.readouterr()
            # stderr without the progress bars (their rates differ from run to run)
            err = [line for line in re.split(r"[\r\n]+", captured.err) if line and not line.startswith("check ")]
            results.append((code, captured.out, err))
        assert results[0] == results[1], results
        return results[0]

    root = tmp_path / "coco"
    ids = WRITERS["cocostuff27"](root)["val"]
    code, out, _ = both("--data-root", root, "--check")
    assert code == 0 and "cocostuff27 val2017: checking 5 ids of" in out and "OK: 0 problems in val2017" in out
    damage(get_dataset("cocostuff27"), root, ids)
    code, out, last = both("--data-root", root, "--check", "--splits", "val", "train")
    assert code == 1 and "cocostuff27 val2017: FAILED, 4 problems in 5 ids" in out
    assert last[0].startswith(f"error: --data-root {root}: 4 problems in val2017, 0 in train2017 (listed above)")
    code, out, last = both("--data-root", tmp_path / "nowhere", "--check")
    expected = "no such folder (expected images/, annotations/ and optionally curated/)"
    assert code == 2 and out == "" and last == [f"error: --data-root {tmp_path / 'nowhere'}: {expected}"]
    code, out, last = both("--data-root", root, "--check-limit", "0")
    assert code == 2 and last[0].startswith("error: argument --check-limit: expected a positive whole number, got '0'")


def test_the_alias_takes_cocostuff27s_label_map(tmp_path, capsys):
    """A fine id COCO-Stuff-27 maps and COCO-Stuff-171 does not (11): accepted by the alias, as by
    prepare_data.py cocostuff27; rejected by cocostuff171. A value outside both is rejected by all."""
    ids = write_synthetic_cocostuff(tmp_path, num_train=0, num_val=2, sizes=((64, 48),))["val"]
    label_file = tmp_path / "annotations" / "val2017" / f"{ids[0]}.png"
    label = np.array(Image.open(label_file))
    label[10, 10] = 11
    Image.fromarray(label).save(label_file)
    args = ["--data-root", str(tmp_path), "--splits", "val", "--check"]
    assert prepare_cocostuff.main(args) == 0
    assert prepare_data.main(["cocostuff27", *args]) == 0
    capsys.readouterr()
    assert prepare_data.main(["cocostuff171", *args]) == 1
    assert f"  {ids[0]} (label values [11] are not in the label map (cocostuff171.json" in capsys.readouterr().out
    label[10, 10] = 183
    Image.fromarray(label).save(label_file)
    assert prepare_cocostuff.main(args) == 1
    assert f"  {ids[0]} (label values [183] are not in the label map (cocostuff27.json" in capsys.readouterr().out


def test_split_lists_are_read_as_people_write_them(tmp_path, capsys):
    ids = write_synthetic_cocostuff(tmp_path / "coco", num_train=0, num_val=3, sizes=((64, 48),))["val"]
    coco_list = tmp_path / "coco" / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    coco_list.write_bytes(f"\ufeff{ids[0]} \r\n{ids[1]}\t\r\n\r\n  {ids[2]}\r\n".encode())
    assert get_dataset("cocostuff171").split_ids(tmp_path / "coco", "val") == ids
    assert prepare_cocostuff.main(["--data-root", str(tmp_path / "coco"), "--splits", "val", "--check"]) == 0
    potsdam = tmp_path / "potsdam"
    write_synthetic_potsdam(potsdam, num_train=0, num_val=3, size=32)
    (potsdam / "labelled_test.txt").write_bytes(b"\xef\xbb\xbf0\t \r\n1\r2  \n")  # old Mac line end too
    assert get_dataset("potsdam3").split_ids(potsdam, "val") == ["0", "1", "2"]
    assert prepare_data.main(["potsdam3", "--data-root", str(potsdam), "--splits", "val", "--check"]) == 0

    odd = tmp_path / "odd.txt"
    odd.write_text("a\nb\n", encoding="utf-16")
    with pytest.raises(DataError, match="odd.txt: not a UTF-8 text file"):
        read_split_list(odd)
    odd.write_bytes(b"\xef\xbb\xbf \r\n\t\r\n")
    with pytest.raises(DataError, match="odd.txt: the split list is empty"):
        read_split_list(odd)
    odd.write_bytes(b"7\r\n8\r\n7 \r\n")
    with pytest.raises(DataError, match=r"odd.txt: 1 id\(s\) listed more than once \(first: 7\)"):
        read_split_list(odd)
    with pytest.raises(DataError, match="absent.txt: split list not found"):
        read_split_list(tmp_path / "absent.txt")


# ---------------------------------------------------------------- COCO-Stuff download and unpack


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
def coco_server(http_server, fixture_root):
    """Serves the three zips under one base URL, the layout ``--base-url`` expects."""
    for folder in ("val2017", "train2017"):
        http_server.serve_bytes(f"zips/{folder}.zip", zip_folders(fixture_root / "images", [folder], ".jpg"))
    http_server.serve_bytes(
        COCO_LABELS_ZIP, zip_folders(fixture_root / "annotations", ["train2017", "val2017"], ".png")
    )
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

    assert prepare_cocostuff.main(["--data-root", str(data_root), "--base-url", coco_server.url()]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK: 0 problems in val2017, 0 in train2017 (14 images checked)"
    for folder in ("val2017", "train2017"):
        assert same_tree(data_root / "images" / folder, fixture_root / "images" / folder, "*.jpg")
        assert same_tree(data_root / "annotations" / folder, fixture_root / "annotations" / folder, "*.png")
    assert sorted(path.name for path in (data_root / "images").iterdir()) == ["train2017", "val2017"]
    assert not (data_root / "downloads").exists()
    assert len(coco_server.requests_for(COCO_LABELS_ZIP)) == 1  # one labels zip serves both splits

    served = len(coco_server.requests)
    assert prepare_data.main(["cocostuff27", "--data-root", str(data_root), "--base-url", coco_server.url()]) == 0
    assert "already there" in capsys.readouterr().out
    assert len(coco_server.requests) == served


def test_prepare_only_val_keeping_the_zips(coco_server, data_root, tmp_path):
    zips = tmp_path / "zips"
    args = ["--data-root", str(data_root), "--splits", "val", "--keep-zips", "--zips-dir", str(zips)]
    assert prepare_data.main(["cocostuff27", *args, "--base-url", coco_server.url()]) == 0
    assert sorted(path.name for path in zips.glob("*.zip")) == [COCO_LABELS_ZIP, "val2017.zip"]
    assert not (data_root / "downloads").exists()
    assert (data_root / "annotations" / "val2017").is_dir()
    assert not (data_root / "annotations" / "train2017").exists()
    assert not (data_root / "images" / "train2017").exists()
    assert coco_server.requests_for("zips/train2017.zip") == []


def test_the_users_own_zips_stay_byte_for_byte(coco_server, data_root, fixture_root, tmp_path):
    """Zips put in --zips-dir by hand are unpacked and left as they were; only a zip the command
    downloaded itself (marked ZIP.downloaded) is deleted once unpacked."""
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "val2017.zip").write_bytes(zip_folders(fixture_root / "images", ["val2017"], ".jpg"))
    own = (zips / "val2017.zip").read_bytes()
    args = ["--data-root", str(data_root), "--splits", "val", "--zips-dir", str(zips), "--base-url", coco_server.url()]
    assert prepare_data.main(["cocostuff27", *args]) == 0
    assert (data_root / "images" / "val2017").is_dir() and (data_root / "annotations" / "val2017").is_dir()
    assert sorted(path.name for path in zips.iterdir()) == ["val2017.zip"]  # the labels zip: downloaded, deleted
    assert (zips / "val2017.zip").read_bytes() == own
    assert coco_server.requests_for("zips/val2017.zip") == []


def test_a_full_disk_while_downloading_or_unpacking(coco_server, data_root, tmp_path, capsys):
    """One line naming the file or folder and the free space, exit 1; nothing half-made under a
    final name; the next run, with space, finishes."""
    args = ["--splits", "val", "--base-url", coco_server.url()]
    zips = ["--zips-dir", str(tmp_path / "zips")]
    with small_disk(tmp_path / "small", "160k") as disk:
        assert prepare_data.main(["cocostuff27", *args, "--data-root", str(data_root), "--zips-dir", str(disk)]) == 1
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"error: {disk / 'val2017.zip.part'}: cannot write it, the disk is full"), line
        assert not (disk / "val2017.zip").exists()
        for path in disk.iterdir():
            path.unlink()
        shutil.copytree(data_root / "curated", disk / "coco" / "curated")
        assert prepare_data.main(["cocostuff27", *args, "--data-root", str(disk / "coco"), *zips]) == 1
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"error: {disk / 'coco/images/val2017'}: cannot write it, the disk is full"), line
        assert list((disk / "coco" / "images").iterdir()) == []  # the half-unpacked folder went
    assert prepare_data.main(["cocostuff27", *args, "--data-root", str(data_root), *zips]) == 0
    assert not any((tmp_path / "zips").iterdir())  # its own downloads, deleted once unpacked


def test_output_locations_are_checked_before_downloading(coco_server, data_root, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for args, culprit in (
        (["--data-root", str(a_file)], f"--data-root {a_file}: exists and is not a folder"),
        (["--data-root", str(data_root), "--zips-dir", str(a_file)], f"--zips-dir {a_file}: exists and is not a"),
    ):
        assert prepare_cocostuff.main([*args, "--base-url", coco_server.url()]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {culprit}"), err
    assert coco_server.requests == []
    assert not (data_root / "images").exists()


def test_a_truncated_zip_is_rejected(coco_server, data_root, fixture_root, capsys):
    whole = zip_folders(fixture_root / "images", ["val2017"], ".jpg")
    coco_server.serve_bytes("zips/val2017.zip", whole[: len(whole) // 2])
    assert (
        prepare_cocostuff.main(["--data-root", str(data_root), "--splits", "val", "--base-url", coco_server.url()]) == 1
    )
    message = capsys.readouterr().err.strip().splitlines()[-1]
    zip_path = data_root / "downloads" / "val2017.zip"
    assert message.startswith(f"error: {zip_path} is damaged or incomplete") and "Delete it" in message
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
    assert str(zip_path) in str(info.value) and "Delete it" in str(info.value) and info.value.exit_code == 1
    assert not target.exists() and not (tmp_path / "images" / ".val2017.unpacking").exists()


def test_a_zip_without_the_split_folder_is_rejected(tmp_path):
    zip_path = tmp_path / "other.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("somewhere/else.jpg", b"jpg")
    with pytest.raises(DataError, match="no files under val2017/"):
        unpack_folder(zip_path, "val2017", tmp_path / "val2017", quiet=True)


def test_shipped_curated_lists_are_verified_and_copied(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    install_curated_lists(root, ["val", "train"], quiet=True)
    spec = get_dataset("cocostuff27")
    for split, count in (("val", 2175), ("train", 49629)):
        own = root / "curated" / f"{split}2017" / prepare_data.SPLIT_LIST_NAME
        assert own.read_bytes() == (prepare_data.SHIPPED_CURATED_DIR / f"{split}2017" / own.name).read_bytes()
        assert spec.split_source(root, split) == own and len(spec.split_ids(root, split)) == count
    assert sorted(path.name for path in (root / "curated" / "val2017").iterdir()) == [own.name]  # no temp file

    damaged = tmp_path / "damaged"
    (damaged / "val2017").mkdir(parents=True)
    (damaged / "val2017" / prepare_data.SPLIT_LIST_NAME).write_text("000000000001\n")
    monkeypatch.setattr(prepare_data, "SHIPPED_CURATED_DIR", damaged)
    with pytest.raises(DataError, match="de66cfb9"):
        install_curated_lists(tmp_path / "other", ["val"])


def test_check_of_the_golden_root(fixture_root, capsys):
    assert prepare_cocostuff.main(["--data-root", str(fixture_root), "--check"]) == 0
    out = capsys.readouterr().out
    assert "note: the official val2017 split has 2175 images, this root has 6" in out
    assert out.splitlines()[-1] == "OK: 0 problems in val2017, 0 in train2017 (14 images checked)"
