"""scripts/gallery.py through its entry point (forked, tests/cli_runner.py) on a generated tree of
synthetic scenes: the files it writes, their content against an independent segmentation, the same
files for the same inputs, the clusters.yaml that is never replaced once edited, --names, --input,
--sample and an unreadable image; and engine/gallery.py's highlight picture."""

import re
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_command_lines
from helpers import save_released, small_model
from PIL import Image, PngImagePlugin

from data.photos import OUTPUT_MARK, read_photo, written_by_iddc
from data.synthetic import make_scene
from engine.gallery import highlight
from engine.names import read_names
from engine.segment import segment
from modules.checkpoint import load_iddc_model

ROOT = Path(__file__).resolve().parents[1]
NUM_CLUSTERS = 5
SHORT_SIDE = 64  # in the checkpoint's config: the gallery's default working size
# The scanned images (relative paths, as the page shows them) and their (width, height).
SCENES = {"s0.png": (96, 80), "a/s1.jpg": (80, 96), "a/deep/s2.png": (112, 80), "b/s0.png": (90, 72)}
PER_CLUSTER = 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A data root: nested folders, one name in two folders, a JPEG, a labels/ folder, a file that
    is not an image, a PNG the project wrote; a names file that merges two clusters; a broken image."""
    base = tmp_path_factory.mktemp("gallery")
    root = base / "root"
    rng = np.random.default_rng(3)
    for relative, (width, height) in SCENES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_scene(height, width, rng)[0]).save(root / relative, quality=95)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((80, 96), np.uint8)).save(root / "labels" / "s0.png")
    (root / "notes.txt").write_text("not an image")
    (base / "no_images").mkdir()
    (base / "no_images" / "clip.mp4").write_bytes(b"not an image by its extension")
    mark = PngImagePlugin.PngInfo()
    mark.add_text(*OUTPUT_MARK)
    Image.new("RGB", (96, 80), "red").save(root / "s0_color.png", pnginfo=mark)
    checkpoint = save_released(
        small_model(num_classes=NUM_CLUSTERS), base / "model.pth", config={"short_side": SHORT_SIDE}
    )
    names = base / "names.yaml"  # made for another checkpoint: a warning, not a refusal
    names.write_text(
        "checkpoint: other.pth\nsha256: "
        + "0" * 64
        + "\nclusters:\n"
        + "".join(
            f"  - {{id: {k}, name: {'thing' if k < 2 else f'part {k}'}, colour: '#{k + 1:02x}fe{k:02x}'}}\n"
            for k in range(NUM_CLUSTERS)
        )
    )
    bad_names = base / "bad.yaml"
    bad_names.write_text(
        "clusters:\n" + "".join(f"  - {{id: {k}, name: n{k}, colour: red}}\n" for k in range(NUM_CLUSTERS))
    )
    big = base / "big.jpg"  # a 24 MP photo: decoded at a reduced size, its shares counted at full size
    scene = Image.fromarray(make_scene(100, 150, rng)[0]).resize((6000, 4000), Image.NEAREST)
    scene.save(big, quality=80)
    broken = base / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return {
        "base": base,
        "root": root,
        "checkpoint": checkpoint,
        "names": names,
        "bad": bad_names,
        "broken": broken,
        "big": big,
    }


def files_of(folder):
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def runs(tree):
    """Every command line of the tests, in two rounds (the second reruns into the first's folders).

    {name: (Done, {file name: bytes} after that run)}."""
    base, root = tree["base"], tree["root"]
    common = ["--checkpoint", tree["checkpoint"], "--device", "cpu", "--per-cluster", PER_CLUSTER]

    def gallery(*argv):
        return ("scripts/gallery.py", [*common, *map(str, argv)], ())

    first = {
        "first": gallery("--data-root", root, "--output-dir", base / "first"),
        "again": gallery("--data-root", root, "--output-dir", base / "again"),
        "input": gallery(
            "--input",
            root / "a",
            root / "s0.png",
            tree["broken"],
            tree["big"],
            "--names",
            tree["names"],
            "--no-flip",
            "--output-dir",
            base / "input",
        ),
        "sample": gallery("--data-root", root, "--sample", 2, "--seed", 1, "--output-dir", base / "sample"),
        "bad_names": gallery("--data-root", root, "--names", tree["bad"], "--output-dir", base / "bad"),
        "no_images": gallery("--input", base / "no_images", "--output-dir", base / "none"),
    }
    done = {key: (result, None) for key, result in run_command_lines(first).items()}
    for key in ("first", "again", "input", "sample"):
        done[key] = (done[key][0], files_of(base / key))
    names_file = base / "first" / "clusters.yaml"
    names_file.write_text(names_file.read_text().replace("name: cluster 0", "name: sky"))
    default_file = base / "again" / "clusters.yaml"  # still default names, shares edited: rewritten
    default_file.write_text(re.sub(r"share: [0-9.e-]+", "share: 0.5", default_file.read_text()))
    second = {
        "edited": gallery("--data-root", root, "--output-dir", base / "first"),
        "repeat": gallery("--data-root", root, "--output-dir", base / "again"),
    }
    for key, result in run_command_lines(second).items():
        done[key] = (result, files_of(base / ("first" if key == "edited" else "again")))
    return done


def succeeded(runs, key):
    result, files = runs[key]
    assert result.code == 0, f"{key}: exit {result.code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result, files


@pytest.fixture(scope="module")
def model(tree):
    return load_iddc_model(tree["checkpoint"])[0].eval()


def expected_counts(model, tree, relative):
    """Pixel counts per cluster of one image, segmented independently as predict.py segments it."""
    image, original = read_photo(tree["root"] / relative, SHORT_SIDE)
    clusters = segment(model, image, "cpu", size=original)  # (H, W), flip averaging on as by default
    return np.bincount(clusters.reshape(-1), minlength=NUM_CLUSTERS)


def listed_images(index_html):
    """{cluster: [(share %, label)]} from the page's lists."""
    listed = {}
    for cluster, items in re.findall(r'<section id="cluster-(\d+)">.*?<ol>(.*?)</ol>', index_html, re.S):
        listed[int(cluster)] = [
            (float(share), label) for share, label in re.findall(r"<li>([0-9.]+)% (.*?)</li>", items)
        ]
    return listed


def test_gallery_files_and_content(tree, runs, model, tmp_path):
    result, files = succeeded(runs, "first")
    sheets = [f"cluster_{k:03d}.png" for k in range(NUM_CLUSTERS)]
    assert set(files) == {"index.html", "clusters.yaml", *sheets}
    for sheet in sheets:
        assert written_by_iddc(tree["base"] / "first" / sheet)
    page = files["index.html"].decode()
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and "<script" not in page and "http" not in page
    for link in links:
        assert link.startswith("#") or (tree["base"] / "first" / link).is_file(), link
    # The shares: every pixel of every scanned image at its original size, as predict.py maps it.
    counts = {relative: expected_counts(model, tree, relative) for relative in SCENES}
    total = sum(counts.values())
    (tmp_path / "clusters.yaml").write_bytes(files["clusters.yaml"])  # as the first run left it
    names = read_names(tmp_path / "clusters.yaml", NUM_CLUSTERS)
    assert names.names == [f"cluster {k}" for k in range(NUM_CLUSTERS)] and names.checkpoint == "model.pth"
    tolerance = 5 / total.sum()  # a few pixels: the test process may sum windows with other threads
    assert np.allclose(names.shares, total / total.sum(), atol=tolerance)
    # Each cluster lists the images where it covers the most, best first; labels/, the text file
    # and the project's own PNG are not scanned.
    listed = listed_images(page)
    assert sorted(listed) == list(range(NUM_CLUSTERS))
    for cluster, entries in listed.items():
        image_shares = {relative: 100 * count[cluster] / count.sum() for relative, count in counts.items()}
        best = sorted((share for share in image_shares.values() if share > 0), reverse=True)[:PER_CLUSTER]
        assert [share for share, _ in entries] == pytest.approx(best, abs=0.1 + 100 * 5 / 6000)
        for share, label in entries:
            assert label in SCENES and share == pytest.approx(image_shares[label], abs=0.1)
    assert "scanning 4 of 4 images at short side 64" in result.stdout


def test_same_inputs_give_the_same_files(runs):
    _, first = succeeded(runs, "first")
    _, again = succeeded(runs, "again")
    assert first == again
    # A clusters.yaml with default names only is rewritten: the repeat gives the same files again.
    _, repeat = succeeded(runs, "repeat")
    assert repeat == first


def test_edited_names_are_never_replaced(tree, runs):
    _, before = succeeded(runs, "first")
    result, after = succeeded(runs, "edited")
    assert after["clusters.yaml"] == before["clusters.yaml"].replace(b"name: cluster 0", b"name: sky")
    assert after["clusters.new.yaml"] == before["clusters.yaml"]
    assert "clusters.new.yaml" in result.stdout and "kept" in result.stdout
    assert 'href="clusters.new.yaml"' in after["index.html"].decode()
    assert {name: data for name, data in after.items() if name.endswith(".png")} == {
        name: data for name, data in before.items() if name.endswith(".png")
    }


def test_input_names_and_an_unreadable_image(tree, runs):
    result, files = runs["input"]
    assert result.code == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 5 image(s) could not be read: broken.jpg")
    assert "made for another checkpoint" in result.stdout and str(tree["names"]) in result.stdout
    names = read_names(tree["base"] / "input" / "clusters.yaml", NUM_CLUSTERS)
    assert names.names[:2] == ["thing", "thing"] and names.sha256 != "0" * 64
    page = files["index.html"].decode()
    assert "broken.jpg" in page and "cluster 2: part 2" in page
    listed = {label for entries in listed_images(page).values() for _, label in entries}
    assert "big.jpg" in listed and listed <= {"s1.jpg", "deep/s2.png", "s0.png", "big.jpg"}
    # Pixels are counted at each image's original size, the 24 MP photo's too.
    scanned = sum(width * height for relative, (width, height) in SCENES.items() if relative != "b/s0.png")
    assert f"4 images scanned ({scanned + 6000 * 4000:,} pixels at their original sizes)" in page
    # Clusters 0 and 1 share a name: one class, drawn in cluster 0's colour everywhere.
    sheets = []
    for cluster in range(NUM_CLUSTERS):
        with Image.open(tree["base"] / "input" / f"cluster_{cluster:03d}.png") as sheet:
            sheets.append(np.asarray(sheet.convert("RGB")).reshape(-1, 3))  # (pixels, 3)
    pixels = np.concatenate(sheets)
    assert (pixels == (0x01, 0xFE, 0x00)).all(axis=1).any() and not (pixels == (0x02, 0xFE, 0x01)).all(axis=1).any()


def test_sample_and_refusals(tree, runs):
    _, files = succeeded(runs, "sample")
    page = files["index.html"].decode()
    assert "<p>2 images scanned" in page
    assert len({label for entries in listed_images(page).values() for _, label in entries}) <= 2
    result, _ = runs["bad_names"]
    assert result.code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.yaml" in last and "colour 'red'" in last
    result, _ = runs["no_images"]
    folder = tree["base"] / "no_images"
    assert result.code == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: --input {folder}: no images found (1 file(s) that are not images by their extension)"
    )
    assert not (tree["base"] / "none").exists()


def test_highlight_keeps_the_cluster_and_dims_the_rest():
    picture = Image.fromarray(np.full((6, 8, 3), 200, np.uint8))
    clusters = np.zeros((6, 8), np.uint8)
    clusters[1:5, 2:7] = 3
    shown = np.asarray(highlight(picture, clusters, 3, (255, 0, 0)))  # (6, 8, 3)
    assert (shown[2:4, 3:6] == 200).all()  # inside: as it is
    assert (shown[1, 2:7] == (255, 0, 0)).all() and (shown[4, 2:7] == (255, 0, 0)).all()  # its outline
    assert (shown[clusters != 3] < 120).all()  # outside: dimmed


def test_the_docs_show_the_gallery():
    page = (ROOT / "docs" / "own_data.md").read_text()
    assert "](gallery_example.png)" in page and (ROOT / "docs" / "gallery_example.png").is_file()
