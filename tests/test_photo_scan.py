"""The shared ground of every tool that reads a user's collection: the folder scan and the working size."""

import os

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from data.photos import OUTPUT_MARK, display_path, read_photo, scan_images, working_size
from data.spec import DataError


def write_image(path, size=(32, 24), **params):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path, **params)
    return path


def test_scan_finds_images_at_any_depth_and_skips_what_is_not_a_photo(tmp_path):
    write_image(tmp_path / "a" / "b" / "x.JPG")
    write_image(tmp_path / "a" / "y.png")
    write_image(tmp_path / "z.webp")
    write_image(tmp_path / ".hidden" / "h.png")
    write_image(tmp_path / "a" / ".h.png")
    write_image(tmp_path / "labels" / "a" / "y.png")  # the folder dataset's labels
    (tmp_path / "notes.txt").write_text("not an image")
    info = PngImagePlugin.PngInfo()
    info.add_text(*OUTPUT_MARK)
    write_image(tmp_path / "a" / "y_clusters.png", pnginfo=info)  # written by the project
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")  # a link back up: followed once, never again
    scan = scan_images(tmp_path, exclude_top=("labels",))
    assert [p.as_posix() for p in scan.images] == ["a/b/x.JPG", "a/y.png", "z.webp"]
    assert [p.as_posix() for p in scan.skipped] == ["notes.txt"]
    assert [p.as_posix() for p in scan.outputs] == ["a/y_clusters.png"]
    # Without the exclusion, labels/ is just another folder of images.
    assert "labels/a/y.png" in [p.as_posix() for p in scan_images(tmp_path).images]


def test_scan_refuses_two_stems_in_one_folder_naming_both(tmp_path):
    write_image(tmp_path / "d" / "x.jpg")
    write_image(tmp_path / "d" / "x.png")
    write_image(tmp_path / "e" / "x.png")  # another folder: no clash
    with pytest.raises(DataError, match=r"d/x\.jpg and .*d/x\.png"):
        scan_images(tmp_path)


def test_undecodable_names_are_shown_escaped(tmp_path):
    name = os.fsdecode(b"caf\xe9 photo.png")
    write_image(tmp_path / name)
    scan = scan_images(tmp_path)
    assert display_path(scan.images[0]) == "caf\\xe9 photo.png"


@pytest.mark.parametrize(
    "size, short_side, expected",
    [
        ((6000, 4000), 480, (720, 480)),
        ((4000, 6000), 480, (480, 720)),
        ((300, 200), 480, (300, 200)),
        ((9, 7), None, (9, 7)),
    ],
)
def test_working_size(size, short_side, expected):
    assert working_size(*size, short_side) == expected


def test_large_jpeg_is_read_upright_at_the_working_size(tmp_path):
    """A rotated 12 MP-class JPEG: draft decoding and EXIF orientation give the upright image at the
    working size, close to a full decode resized."""
    height, width = 1200, 1800
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees clockwise (portrait)
    path = tmp_path / "big.jpg"
    Image.fromarray(gradient).save(path, quality=95, exif=exif)
    small, original = read_photo(path, short_side=300)
    full, _ = read_photo(path)
    assert original == (height, width) == full.size
    assert small.size == working_size(*original, 300) == (300, 450)
    reference = np.asarray(full.resize(small.size, Image.BILINEAR), dtype=np.float64)
    assert np.abs(np.asarray(small, dtype=np.float64) - reference).mean() < 3.0
