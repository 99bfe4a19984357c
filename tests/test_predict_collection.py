"""predict.py at collection scale, through its entry point, on a tree the tests write: nested
folders, one name in two folders, mixed formats, a 6000x4000 photo, a labels/ folder, a hidden
folder and a non-image file. --recursive outputs at their relative paths and shares.csv; a job
killed with SIGKILL and continued equals an uninterrupted one, as do 2 processes; another
checkpoint or other options into the job's folder are refused; names files (merging, the file
beside the checkpoint, another checkpoint's, bad ones); a clip written with PyAV."""

import csv
import json
import os
import shutil
import signal
import time
from fractions import Fraction

import numpy as np
import pytest
import yaml
from helpers import finish_ranks, save_released, small_model, start_command_line, start_ranks, wait_exit
from PIL import Image

import predict as predict_cli
from engine.names import default_palette, file_sha256

NUM_CLUSTERS = 6
SHORT_SIDE = 64  # the checkpoint's working size, as the folder dataset stores it
FAST = ["--window", "32", "--overlap", "8", "--device", "cpu", "--batch-size", "64"]
# The straight job's flags (the overlays are written in the names and video tests: a 24 MP one costs seconds).
STRAIGHT = ("--recursive", "--outputs", "clusters,color")
# (relative path, (width, height)); IMG_1.jpg in two folders; big.jpg sorts last.
PHOTOS = (
    ("a/IMG_1.jpg", (96, 72)),
    ("a/deep/x.png", (80, 64)),
    ("b/IMG_1.jpg", (72, 96)),
    ("b/photo.webp", (90, 60)),
    ("big.jpg", (6000, 4000)),
)


def blocks(size, seed):
    """An RGB picture of random coloured blocks (some structure for the model, cheap to encode)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, size[1] // 16), max(2, size[0] // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection") / "photos"
    for seed, (relative, size) in enumerate(PHOTOS):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        blocks(size, seed).save(root / relative, quality=90)
    blocks((64, 48), 7).save(os.fsdecode(bytes(root / "b") + b"/caf\xe9.jpg"), format="JPEG")  # not UTF-8
    (root / "notes.txt").write_text("not an image")
    (root / "labels" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((72, 96), np.uint8)).save(root / "labels" / "a" / "IMG_1.png")
    (root / ".hidden").mkdir()
    blocks((64, 64), 9).save(root / ".hidden" / "y.jpg")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    config = {"dataset": "folder", "short_side": SHORT_SIDE, "num_clusters": NUM_CLUSTERS}
    model = small_model(depth=1, num_classes=NUM_CLUSTERS)
    return {
        "mine": save_released(model, folder / "mine.pth", config=config),
        "other": save_released(
            small_model(depth=1, num_classes=NUM_CLUSTERS, seed=1), folder / "other.pth", config=config
        ),
    }


def command(checkpoint, inputs, out, *flags):
    return [
        "--checkpoint",
        str(checkpoint),
        "--input",
        *map(str, inputs),
        "--output-dir",
        str(out),
        *FAST,
        *map(str, flags),
    ]


def read(path):
    with Image.open(path) as image:
        image.load()
        return image


def maps(out):
    """{relative path: cluster ids} of every *_clusters.png under ``out``."""
    return {
        path.relative_to(out).as_posix(): np.array(read(path))
        for path in sorted(out.rglob("*_clusters.png"))
        if not any(part.startswith(".") for part in path.relative_to(out).parts)
    }


@pytest.fixture(scope="module")
def jobs(tree, checkpoints, tmp_path_factory):
    """The straight job, a job killed with SIGKILL once its first image is done and then continued,
    and the job of 2 processes, the last two writing the cluster maps only."""
    work = tmp_path_factory.mktemp("jobs")
    straight, killed, ranks = work / "straight", work / "killed", work / "ranks"
    clusters_only = ("--recursive", "--outputs", "clusters")
    killed_argv = command(checkpoints["mine"], [tree], killed, *clusters_only)
    pid = start_command_line("predict.py", killed_argv, work / "killed.out", work / "killed.err")
    rank_pids = start_ranks([("predict.py", command(checkpoints["mine"], [tree], ranks, *clusters_only))], 2, work)
    records = killed / ".shares"
    deadline = time.monotonic() + 120
    while not (records.is_dir() and any(records.rglob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid, deadline) == -signal.SIGKILL
    done_before = sorted(path.relative_to(records).as_posix() for path in records.rglob("*.json"))
    assert 0 < len(done_before) <= len(PHOTOS), done_before
    assert "big.jpg.json" not in done_before  # killed before its last image
    assert predict_cli.main(command(checkpoints["mine"], [tree], straight, *STRAIGHT)) == 0
    finish_ranks(rank_pids, timeout=120)
    assert predict_cli.main(killed_argv) == 0
    return {"straight": straight, "killed": killed, "ranks": ranks, "done_before": done_before}


def test_recursive_outputs_keep_relative_paths_and_shares(jobs, tree):
    out = jobs["straight"]
    for relative, size in PHOTOS:
        stem = relative.rsplit(".", 1)[0]
        assert not (out / f"{stem}_overlay.png").exists()  # --outputs clusters,color
        for suffix in ("_clusters.png", "_color.png"):
            assert read(out / f"{stem}{suffix}").size == size, (relative, suffix)
    expected = {relative.rsplit(".", 1)[0] + "_clusters.png" for relative, _ in PHOTOS} | {"b/caf\udce9_clusters.png"}
    assert set(maps(out)) == expected
    assert not (out / "labels").exists() and not (out / ".hidden").exists()
    with open(out / "shares.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "width", "height", *(f"cluster {k}" for k in range(NUM_CLUSTERS))]
    assert [row[0] for row in rows[1:]] == sorted([relative for relative, _ in PHOTOS] + ["b/caf\\xe9.jpg"])
    produced = maps(out)
    for row in rows[1:]:
        ids = produced[row[0].replace("\\xe9", "\udce9").rsplit(".", 1)[0] + "_clusters.png"]
        assert (int(row[1]), int(row[2])) == (ids.shape[1], ids.shape[0])
        expected = np.bincount(ids.ravel(), minlength=NUM_CLUSTERS) / ids.size
        np.testing.assert_allclose([float(share) for share in row[3:]], expected, atol=1e-6)
    # A folder model without names: "cluster N" in the fixed palette of clusters.
    ids = maps(out)["a/IMG_1_clusters.png"]
    assert (np.array(read(out / "a" / "IMG_1_color.png")) == default_palette(NUM_CLUSTERS)[ids]).all()


def test_killed_and_continued_equals_straight(jobs):
    straight, killed = maps(jobs["straight"]), maps(jobs["killed"])
    assert straight.keys() == killed.keys()
    for name in straight:
        np.testing.assert_array_equal(killed[name], straight[name], err_msg=name)
    assert (jobs["killed"] / "shares.csv").read_bytes() == (jobs["straight"] / "shares.csv").read_bytes()
    assert not list(jobs["killed"].rglob("*_color.png"))  # --outputs clusters


def test_two_processes_equal_one(jobs):
    straight, ranks = maps(jobs["straight"]), maps(jobs["ranks"])
    assert straight.keys() == ranks.keys()
    for name in straight:
        np.testing.assert_array_equal(ranks[name], straight[name], err_msg=name)
    assert (jobs["ranks"] / "shares.csv").read_bytes() == (jobs["straight"] / "shares.csv").read_bytes()


def test_the_job_folder_refuses_another_checkpoint_or_options(jobs, tree, checkpoints, capsys):
    out = jobs["straight"]
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    assert predict_cli.main(command(checkpoints["other"], [tree], out, *STRAIGHT)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: --output-dir {out}: holds the job of another checkpoint (mine.pth")
    assert "other.pth" in last
    assert predict_cli.main(command(checkpoints["mine"], [tree], out, "--recursive", "--outputs", "color")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "other --outputs: clusters,color there, color here" in last
    assert predict_cli.main(command(checkpoints["mine"], [tree], out, *STRAIGHT)) == 0
    assert f"{len(PHOTOS) + 1} of {len(PHOTOS) + 1} inputs already done" in capsys.readouterr().out
    assert json.loads((out / "predict.json").read_text())["options"]["short_side"] == SHORT_SIDE  # the checkpoint's
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.png") if path.name != "legend.png"} == {
        path: stamp for path, stamp in before.items() if path.name != "legend.png"
    }


def test_overwrite_redoes_the_job_with_another_checkpoint(tree, checkpoints, tmp_path):
    photo = tree / "a" / "IMG_1.jpg"
    out = tmp_path / "out"
    assert predict_cli.main(command(checkpoints["mine"], [photo], out)) == 0
    assert predict_cli.main(command(checkpoints["other"], [photo], out)) == 2
    assert predict_cli.main(command(checkpoints["other"], [photo], out, "--overwrite")) == 0
    assert json.loads((out / "predict.json").read_text())["sha256"] == file_sha256(checkpoints["other"])
    fresh = tmp_path / "fresh"
    assert predict_cli.main(command(checkpoints["other"], [photo], fresh)) == 0
    np.testing.assert_array_equal(
        np.array(read(out / "IMG_1_clusters.png")), np.array(read(fresh / "IMG_1_clusters.png"))
    )
    assert (out / "shares.csv").read_bytes() == (fresh / "shares.csv").read_bytes()


def test_two_inputs_with_one_output_are_refused_naming_both(tree, checkpoints, tmp_path, capsys):
    first, second = tree / "a" / "IMG_1.jpg", tree / "b" / "IMG_1.jpg"
    assert predict_cli.main(command(checkpoints["mine"], [first, second], tmp_path / "out")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(first) in last and str(second) in last
    same_stem = tmp_path / "same"
    same_stem.mkdir()
    blocks((40, 40), 1).save(same_stem / "x.jpg")
    blocks((40, 40), 2).save(same_stem / "x.png")
    assert predict_cli.main(command(checkpoints["mine"], [same_stem], tmp_path / "out")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "x.jpg" in last and "x.png" in last
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- names


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    blocks((96, 80), 3).save(folder / "scene.png")
    return folder / "scene.png"


def names_yaml(checkpoint, names, colours=None, sha256=None):
    colours = colours or ["#%02x%02x%02x" % tuple(c) for c in default_palette(len(names))]
    entries = [{"id": k, "name": name, "colour": colour} for k, (name, colour) in enumerate(zip(names, colours))]
    return yaml.safe_dump(
        {"checkpoint": checkpoint.name, "sha256": sha256 or file_sha256(checkpoint), "clusters": entries},
        sort_keys=False,
    )


def test_names_merge_clusters_into_one_class(one_photo, checkpoints, tmp_path):
    names = ["sky", "ground", "sky", "tree", "water", "road"]
    colours = ["#87ceeb", "#8b4513", "#ff0000", "#228b22", "#0000ff", "#808080"]
    names_file = tmp_path / "clusters.yaml"
    names_file.write_text(names_yaml(checkpoints["mine"], names, colours))
    out = tmp_path / "out"
    assert predict_cli.main(command(checkpoints["mine"], [one_photo], out, "--names", names_file)) == 0
    ids = np.array(read(out / "scene_clusters.png"))
    colour = np.array(read(out / "scene_color.png"))
    merged = np.array([[0x87, 0xCE, 0xEB], [0x8B, 0x45, 0x13], [0x87, 0xCE, 0xEB], [0x22, 0x8B, 0x22], [0, 0, 255]])
    merged = np.vstack([merged, [[0x80, 0x80, 0x80]]]).astype(np.uint8)
    assert (colour == merged[ids]).all()  # cluster 2 in cluster 0's colour
    with open(out / "shares.csv", encoding="utf-8", newline="") as handle:
        header, row = list(csv.reader(handle))
    assert header == ["path", "width", "height", "sky", "ground", "tree", "water", "road"]
    counts = np.bincount(ids.ravel(), minlength=NUM_CLUSTERS) / ids.size
    expected = [counts[0] + counts[2], counts[1], counts[3], counts[4], counts[5]]
    np.testing.assert_allclose([float(value) for value in row[3:]], expected, atol=1e-6)


def test_names_beside_the_checkpoint_and_of_another_checkpoint(one_photo, checkpoints, tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    shutil.copy(checkpoints["mine"], checkpoint)
    beside = tmp_path / "model.clusters.yaml"
    names = ["a", "b", "c", "d", "e", "f"]
    beside.write_text(names_yaml(checkpoint, names))
    out = tmp_path / "out"
    assert predict_cli.main(command(checkpoint, [one_photo], out)) == 0
    with open(out / "shares.csv", encoding="utf-8") as handle:
        assert handle.readline().strip() == "path,width,height,a,b,c,d,e,f"
    beside.write_text(names_yaml(checkpoint, names, sha256="0" * 64))
    assert predict_cli.main(command(checkpoint, [one_photo], tmp_path / "warned")) == 0
    printed = capsys.readouterr().out
    assert f"{beside}: made for another checkpoint" in printed and str(checkpoint) in printed
    assert predict_cli.main(command(checkpoint, [one_photo], tmp_path / "strict", "--strict-names")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {beside}: made for another checkpoint") and "--strict-names" in last
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize(
    "case, content, expected",
    [
        ("unknown id", "ids:6", "clusters entry 7: id 6 is not a cluster of this model"),
        ("missing id", "ids:5", "cluster id(s) [5] missing"),
        ("bad colour", "colour", "clusters entry 2: id 1: colour 'red': expected #rrggbb"),
        ("not YAML", "clusters: [ {id: 0,\n  - : :", "not a YAML names file"),
    ],
)
def test_bad_names_files_are_one_line(case, content, expected, one_photo, checkpoints, tmp_path, capsys):
    checkpoint = checkpoints["mine"]
    entries = [{"id": k, "name": f"n{k}", "colour": "#102030"} for k in range(NUM_CLUSTERS)]
    if content == "ids:6":
        entries.append({"id": 6, "name": "extra"})
    elif content == "ids:5":
        entries.pop()
    elif content == "colour":
        entries[1]["colour"] = "red"
    names_file = tmp_path / "names.yaml"
    names_file.write_text(content if case == "not YAML" else yaml.safe_dump({"clusters": entries}))
    assert predict_cli.main(command(checkpoint, [one_photo], tmp_path / "out", "--names", names_file)) == 2, case
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {names_file}") and expected in last, last
    assert not (tmp_path / "out").exists()


def test_names_and_assignment_are_exclusive(one_photo, checkpoints, tmp_path, capsys):
    flags = ["--names", tmp_path / "a.yaml", "--assignment", tmp_path / "eval.json"]
    assert predict_cli.main(command(checkpoints["mine"], [one_photo], tmp_path / "out", *flags)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--names" in last and "--assignment" in last and "one of them" in last


# ---------------------------------------------------------------- video


def write_clip(path, frames, size, rate):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_image(blocks(size, 100 + index))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_video_outputs_and_frames_segment_as_images(checkpoints, tmp_path, capsys):
    import av

    clip = tmp_path / "clip.mp4"
    size, rate, every = (96, 80), Fraction(10), 2
    write_clip(clip, 8, size, rate)
    out = tmp_path / "out"
    assert predict_cli.main(command(checkpoints["mine"], [clip], out, "--every", str(every))) == 0
    assert "H.264" in capsys.readouterr().out
    for name in ("clip_overlay.mp4", "clip_color.mp4"):
        with av.open(str(out / name)) as video:
            stream = video.streams.video[0]
            decoded = list(video.decode(stream))
            assert len(decoded) == 4 and stream.average_rate == rate / every, name
            assert (stream.codec_context.width, stream.codec_context.height) == size
    frames = tmp_path / "frames"
    frames.mkdir()
    with av.open(str(clip)) as video:
        for index, frame in enumerate(video.decode(video=0)):
            if index % every == 0:
                frame.to_image().save(frames / f"{index:06d}.png")
    assert (
        predict_cli.main(command(checkpoints["mine"], [frames], tmp_path / "as_images", "--outputs", "clusters")) == 0
    )
    produced = sorted(path.name for path in (out / "clip").iterdir())
    assert produced == [f"{index:06d}_clusters.png" for index in range(0, 8, every)]
    for name in produced:
        np.testing.assert_array_equal(
            np.array(read(out / "clip" / name)), np.array(read(tmp_path / "as_images" / name))
        )
    with open(out / "shares.csv", encoding="utf-8") as handle:
        assert [line.split(",")[0] for line in handle][1:] == [f"clip.mp4#{i:06d}" for i in range(0, 8, every)]


def test_undecodable_clip_is_reported_as_an_image_is(checkpoints, one_photo, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    assert predict_cli.main(command(checkpoints["mine"], [broken, one_photo], tmp_path / "out")) == 1
    printed = capsys.readouterr()
    assert f"not segmented: {broken}: cannot read the video" in printed.out
    assert printed.err.strip().splitlines()[-1].startswith("error: 1 of 2 image(s) could not be read")
    assert (tmp_path / "out" / "scene_clusters.png").is_file()


def test_eval_pictures_take_names(tmp_path):
    import eval as eval_cli
    from data.synthetic import write_synthetic_cocostuff
    from engine.visualize import CAPTION_HEIGHT

    root = tmp_path / "data"
    image_id = write_synthetic_cocostuff(root, num_train=0, num_val=1, sizes=((96, 64),))["val"][0]
    checkpoint = save_released(small_model(depth=1), tmp_path / "coco.pth")
    names_file = tmp_path / "names.yaml"
    colours = ["#ff0000" if k % 2 == 0 else "#0000ff" for k in range(27)]
    names_file.write_text(names_yaml(checkpoint, ["even" if k % 2 == 0 else "odd" for k in range(27)], colours))
    visuals = tmp_path / "visuals"
    argv = ["--data-root", root, "--checkpoint", checkpoint, "--device", "cpu", "--window", "32", "--overlap", "8"]
    assert eval_cli.main([*map(str, argv), "--save-visuals", str(visuals), "--names", str(names_file)]) == 0
    panel = np.array(read(visuals / f"{image_id}.png"))[CAPTION_HEIGHT:, 2 * 96 :]  # (64, 96, 3): the prediction
    assert {tuple(colour) for colour in panel.reshape(-1, 3)} <= {(255, 0, 0), (0, 0, 255)}
    assert read(visuals / "legend_names.png").size[1] < read(visuals / "legend.png").size[1]
