"""The ``folder`` dataset (docs/own_data.md) through the real entry points, on a folder the tests
write: nested folders of mixed formats (JPEG, PNG, WebP, 16-bit and RGBA PNG, an EXIF-rotated
JPEG, a 6000x4000 JPEG), a file with a garbage header, a truncated JPEG, a non-image file, names
with spaces and undecodable bytes, and label files (one in palette mode).

One module fixture trains the runs every test reads: straight with loader workers, killed and
resumed, and two processes, started side by side."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_runner import fork_script
from helpers import finish_ranks, start_command_line, start_ranks, wait_exit
from PIL import Image
from scipy.optimize import linear_sum_assignment
from test_clusters import count_backbone_forwards
from test_train import head_weights, max_weight_difference, read_log

import eval as eval_cli
import train as train_cli
from data.folder import EXCLUDED_FILE, FILE_LIST
from data.photos import read_photo
from engine.segment import segment
from modules.checkpoint import load_iddc_model
from scripts import prepare_data

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("sky", "grass", "road")
SWEEP_K = (3, 5)  # K = C, and K > C (many-to-one scores)
SHORT_SIDE = 200
RAW_NAME = os.fsdecode(b"raw\xffname.png")  # not UTF-8: kept by Python as a surrogate
EPOCHS = 2
KILL_AT_STEP = 3  # two steps an epoch (8 training images, batch 4): inside the second epoch


def scene(width, height, seed):
    """An RGB picture of three horizontal bands with noise, and its (H, W) class ids."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[height // 3 :] = 1
    labels[2 * height // 3 :] = 2
    colours = np.array([[90, 160, 230], [60, 170, 60], [110, 110, 110]], dtype=np.int16)
    pixels = colours[labels] + rng.integers(-25, 25, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), labels


def write_photo_folder(root):
    """The test folder: 8 training images that decode, a truncated JPEG, 2 labelled images, files
    that are left out. Returns {relative path: what it is}."""
    root = Path(root)
    for folder in ("a/b", "c", "labels/sub", "sub"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    scene(320, 240, 0)[0].save(root / "a/photo one.jpg", quality=90)
    scene(300, 260, 1)[0].save(root / "a/b/deep.PNG")
    scene(280, 250, 2)[0].save(root / "a/b/pic.webp", quality=90)
    wide = (np.asarray(scene(260, 240, 3)[0].convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(root / "c/wide16.png")
    rgba = scene(250, 250, 4)[0].convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "c/rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    scene(320, 240, 5)[0].save(root / "c/rotated.jpg", exif=exif.tobytes())
    scene(300, 200, 6)[0].resize((6000, 4000), Image.BILINEAR).save(root / "big.jpg", quality=80)
    scene(240, 240, 7)[0].save(root / RAW_NAME)
    truncated = root / "c/truncated.jpg"
    scene(320, 240, 8)[0].save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:2000])  # the header opens, the decode fails
    (root / "c/garbage.jpg").write_bytes(b"this is not a JPEG" * 20)
    (root / "labels/c").mkdir()
    Image.fromarray(scene(320, 240, 9)[1]).save(root / "labels/c/garbage.png")  # labelled, yet never scored
    (root / "notes.txt").write_text("not an image\n")
    for relative, seed, mode in (("val one.jpg", 10, "L"), ("sub/val2.png", 11, "P")):
        image, labels = scene(300, 240, seed)
        labels[:10] = 255
        image.save(root / relative)
        label = Image.fromarray(labels, "L")
        if mode == "P":
            label = label.convert("P")
            label.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        label.save((root / "labels" / relative).with_suffix(".png"))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def folder_args(root, dino_file, output_dir, *extra, num_workers=2):
    return [
        "--dataset",
        "folder",
        "--data-root",
        str(root),
        "--backbone-weights",
        str(dino_file),
        "--output-dir",
        str(output_dir),
        "--short-side",
        str(SHORT_SIDE),
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--num-workers",
        str(num_workers),
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--epochs",
        str(EPOCHS),
        "--val-batch-size",
        "8",
        *extra,
    ]


def logged_step(output_dir):
    try:
        rows = read_log(output_dir)
    except (OSError, ValueError):
        return 0
    return max((row["step"] for row in rows if row["kind"] == "train"), default=0)


def kill_at_step(pid, output_dir, ended, timeout=240):
    """In a thread: SIGKILL the run ``pid`` once it has logged KILL_AT_STEP; ``ended['code']`` is how it ended."""
    deadline = time.monotonic() + timeout
    while logged_step(output_dir) < KILL_AT_STEP and time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            ended["code"] = "ended before it was killed"
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    ended["code"] = wait_exit(pid, time.monotonic() + 30)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, folder_root, dino_file):
    """{name: output folder}: a sweep of K = 3 (C) and K = 5 here, with loader workers; beside it,
    forked from this process, the single run of K = 3 on two processes, the same killed in the
    second epoch (then resumed here), and a run on an unlabelled folder. In-process runs use one
    thread, as the forked ones (tests/cli_runner.py), so that their sums agree bit for bit."""
    work = tmp_path_factory.mktemp("folder_runs")
    out = {name: work / name for name in ("sweep", "two", "killed", "unlabelled")}
    (work / "k.yaml").write_text(yaml.safe_dump({"grid": {"num_clusters": list(SWEEP_K)}}))
    ranks = start_ranks([("train.py", folder_args(folder_root, dino_file, out["two"], num_workers=1))], 2, work)
    streams = (work / "killed.out", work / "killed.err")
    killed = start_command_line(
        "train.py", folder_args(folder_root, dino_file, out["killed"], "--checkpoint-every", "1"), *streams
    )
    unlabelled_argv = folder_args(small_folder(work / "plain", count=4), dino_file, out["unlabelled"], num_workers=0)
    unlabelled = fork_script(
        "train.py", [*unlabelled_argv, "--num-clusters", "4", "--epochs", "1"], work / "plain.out", work / "plain.err"
    )
    ended = {}
    watcher = threading.Thread(target=kill_at_step, args=(killed, out["killed"], ended))
    watcher.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep = folder_args(folder_root, dino_file, out["sweep"], "--sweep", str(work / "k.yaml"))
        out["forwards"] = count_backbone_forwards(lambda: train_cli.main(sweep))
        watcher.join()
        assert ended["code"] == -signal.SIGKILL, streams[1].read_text()[-3000:]
        (folder_root / "added later.png").write_bytes((folder_root / "c/rgba.png").read_bytes())
        try:
            resumed = folder_args(folder_root, "/nonexistent-not-needed", out["killed"], "--resume")
            assert train_cli.main(resumed) == 0
        finally:
            (folder_root / "added later.png").unlink()
    finally:
        torch.set_num_threads(threads)
        finish_ranks(ranks)
        code = wait_exit(unlabelled, time.monotonic() + 120)
    assert code == 0, (work / "plain.err").read_text()[-3000:]
    return out


def variant(runs, k):
    return runs["sweep"] / f"num_clusters={k}"


def test_scan_and_substitution(runs, folder_root):
    """The file list holds the images that open; the garbage header is left out by the scan, the
    truncated JPEG substituted in training; both are in the sweep's excluded.txt; exit 0 all the same."""
    sweep = runs["sweep"]
    files = json.loads((sweep / FILE_LIST).read_text())
    assert files["class_names"] == list(CLASSES)
    assert files["val"] == ["sub/val2.png", "val one.jpg"]
    assert len(files["train"]) == 9 and "c/truncated.jpg" in files["train"] and RAW_NAME in files["train"]
    assert "c/garbage.jpg" not in files["train"] and "notes.txt" not in files["train"]
    excluded = dict(line.split("\t") for line in (sweep / EXCLUDED_FILE).read_text().splitlines())
    assert set(excluded) == {"c/garbage.jpg", "c/truncated.jpg"}
    assert "cannot open" in excluded["c/garbage.jpg"] and "replaced" in excluded["c/truncated.jpg"]
    log = (sweep / "train.log").read_text()
    assert "c/garbage.jpg" in log and "c/truncated.jpg" in log
    config = torch.load(variant(runs, 3) / "last_model.pth", weights_only=True)["config"]
    assert config["short_side"] == SHORT_SIDE and config["val_protocol"] == "photo" and config["num_clusters"] == 3


def test_k_sweep_variant_two_processes_and_killed_run_equal(runs):
    """The K sweep makes one backbone forward per batch for both K; its K = C variant, the single
    run on two processes and the single run killed in the second epoch and resumed (after an image
    was added: ignored, the saved list is used) agree."""
    assert runs["forwards"]["training"] == EPOCHS * 2  # one backbone forward per batch for both K
    reference = variant(runs, 3) / "last_model.pth"
    a, b = head_weights(reference), head_weights(runs["killed"] / "last_model.pth")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [row["epoch"] for row in read_log(runs["killed"]) if row["kind"] == "val"] == list(range(EPOCHS))
    assert max_weight_difference(reference, runs["two"] / "last_model.pth") <= 1e-5
    # The image the second process replaced is reported by rank 0 all the same.
    assert "c/truncated.jpg" in (runs["two"] / EXCLUDED_FILE).read_text()


def predicted_confusion(checkpoint, folder_root, num_clusters):
    """(C, K) confusion of the labelled images from the maps of predict's function (engine/segment.py)
    at the checkpoint's working size, brought to the label's size."""
    model, _ = load_iddc_model(checkpoint)
    confusion = np.zeros((len(CLASSES), num_clusters), dtype=np.int64)
    for relative in ("sub/val2.png", "val one.jpg"):
        image, original = read_photo(folder_root / relative, SHORT_SIDE)
        clusters = segment(model.eval(), image, "cpu", size=original)  # (H, W)
        label = np.array(Image.open((folder_root / "labels" / relative).with_suffix(".png")))  # palette: indices
        labelled = label < len(CLASSES)
        np.add.at(confusion, (label[labelled], clusters[labelled]), 1)
    return confusion


@pytest.mark.parametrize("k", SWEEP_K)
def test_eval_equals_predict_maps(runs, folder_root, tmp_path, k):
    """eval.py's Acc/mIoU (Hungarian; many-to-one too for K > C) equal those computed here from
    predict's maps, and the last validation's; labelled images the scan left out are listed."""
    checkpoint = variant(runs, k) / "last_model.pth"
    result = tmp_path / "eval.json"
    argv = ["--dataset", "folder", "--data-root", str(folder_root), "--checkpoint", str(checkpoint)]
    assert eval_cli.main([*argv, "--device", "cpu", "--num-workers", "0", "--output-json", str(result)]) == 0
    scores = json.loads(result.read_text())
    assert scores["num_images"] == 2 and scores["protocol"] == "photo"
    assert (tmp_path / EXCLUDED_FILE).read_text().startswith("c/garbage.jpg\tcannot open the image")
    confusion = predicted_confusion(checkpoint, folder_root, k)
    assert np.array_equal(confusion, np.array(scores["confusion"]))
    rows, cols = linear_sum_assignment(-confusion)
    matched = confusion[rows, cols]
    union = confusion.sum(axis=1)[rows] + confusion.sum(axis=0)[cols] - matched
    assert scores["acc"] == pytest.approx(100 * matched.sum() / confusion.sum())
    assert scores["miou"] == pytest.approx(100 * np.mean(matched / union))
    last_val = [row for row in read_log(variant(runs, k)) if row["kind"] == "val"][-1]
    assert last_val["miou"] == pytest.approx(scores["miou"])
    if k > len(CLASSES):
        merged = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
        for cluster, cls in enumerate(confusion.argmax(axis=0)):
            merged[:, cls] += confusion[:, cluster]
        tp, union = np.diag(merged), merged.sum(axis=0) + merged.sum(axis=1) - np.diag(merged)
        assert scores["acc_many_to_one"] == pytest.approx(100 * tp.sum() / merged.sum())
        assert scores["miou_many_to_one"] == pytest.approx(100 * np.mean(tp / union))


def test_unlabelled_folder(runs, tmp_path, capsys):
    """No labels: trained with --num-clusters, no validation (no best_model.pth), nothing to score."""
    out = runs["unlabelled"]
    assert (out / "last_model.pth").is_file() and not (out / "best_model.pth").exists()
    assert json.loads((out / FILE_LIST).read_text())["val"] == []
    assert "linear probe off" in (out / "train.log").read_text()
    argv = [
        "--dataset",
        "folder",
        "--data-root",
        str(out.parent / "plain"),
        "--checkpoint",
        str(out / "last_model.pth"),
    ]
    assert eval_cli.main([*argv, "--device", "cpu"]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_resume_with_an_image_gone(runs, folder_root, tmp_path, capsys):
    moved = tmp_path / "moved.webp"
    os.replace(folder_root / "a/b/pic.webp", moved)
    try:
        code = train_cli.main(folder_args(folder_root, "/x", runs["killed"], "--resume", "--epochs", "3"))
    finally:
        os.replace(moved, folder_root / "a/b/pic.webp")
    assert code == 2
    assert "a/b/pic.webp" in capsys.readouterr().err


def small_folder(root, count=5, size=(240, 232)):
    """``count`` plain training JPEGs in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene(*size, 20 + index)[0].save(root / f"img{index}.jpg")
    return root


def add_label(root, relative, labels):
    path = (root / "labels" / relative).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(path)
    return path


def bad_folders(tmp_path):
    """{case: (folder, what the error line must name)} for every refusal of a folder's content."""
    cases = {}
    (tmp_path / "empty").mkdir()
    cases["empty"] = (tmp_path / "empty", "no image found")
    only_text = tmp_path / "only_text"
    only_text.mkdir()
    (only_text / "readme.md").write_text("no image\n")
    cases["no image"] = (only_text, "no image found (1 other file(s) skipped)")
    three = small_folder(tmp_path / "three", count=4)
    add_label(three, "img3.jpg", scene(240, 232, 0)[1])  # 3 training images, 1 labelled
    cases["fewer than the batch"] = (three, "--batch-size 4: the training split has only 3")
    cases["no label"] = (small_folder(tmp_path / "unlabelled"), "--num-clusters is required on --dataset folder")
    big_value = small_folder(tmp_path / "big_value")
    labels = scene(240, 232, 0)[1]
    labels[5, 5] = 7
    path = add_label(big_value, "img0.jpg", labels)
    (big_value / "classes.txt").write_text("a\nb\nc\n")
    cases["label value >= C"] = (big_value, f"{path}: label value 7")
    other_size = small_folder(tmp_path / "other_size")
    path = add_label(other_size, "img1.jpg", scene(200, 200, 0)[1])
    cases["label of another size"] = (other_size, f"{path}: label is 200x200")
    repeated = small_folder(tmp_path / "repeated")
    add_label(repeated, "img0.jpg", scene(240, 232, 0)[1])
    (repeated / "classes.txt").write_text("sky\ngrass\nsky\n")
    cases["repeated class name"] = (repeated, "class name 'sky' is given more than once")
    stems = small_folder(tmp_path / "stems")
    scene(240, 232, 0)[0].save(stems / "img0.png")
    cases["two stems"] = (stems, "img0.jpg and")
    return cases


def test_bad_folders_refused_before_any_write(tmp_path, dino_file, capsys):
    """One error line naming the culprit, exit 2, and no output folder."""
    for case, (root, named) in bad_folders(tmp_path).items():
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        assert train_cli.main(folder_args(root, dino_file, out, num_workers=0)) == 2, case
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("error: ") and named in lines[-1], (case, lines[-1])
        assert not out.exists(), case


def test_prepare_data_check_and_train_sh(folder_root, tmp_path, capsys):
    """The check names every problem of the test folder and ends like the benchmarks' checks."""
    assert prepare_data.main(["folder", "--data-root", str(small_folder(tmp_path / "clean")), "--check"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "OK: 0 problems in folder (5 images checked)"
    assert prepare_data.main(["folder", "--data-root", str(folder_root), "--check"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "images per format: jpg 6, png 5, webp 1" in out and "non-image files skipped: 2" in out
    assert "c/garbage.jpg" in out and "c/truncated.jpg" in out
    assert "smallest 240x240, median 300x240, largest 6000x4000" in out
    assert (
        captured.err.strip().splitlines()[-1]
        == f"error: --data-root {folder_root}: 2 problems in folder (listed above)"
    )
    assert prepare_data.main(["folder", "--data-root", str(folder_root)]) == 2
    assert "nothing to download" in capsys.readouterr().err
    shell = subprocess.run(["bash", "train.sh", "folder", "vits16"], cwd=ROOT, capture_output=True, text=True)
    assert shell.returncode == 2 and "python train.py --dataset folder --data-root DIR" in shell.stderr
