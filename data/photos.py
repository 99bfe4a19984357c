"""People's own images: found in a folder tree as every tool finds them, and read as an image
viewer shows them, at full size or at a working size (predict.py, the ``folder`` dataset, the gallery).

Dataset readers (data/cocostuff.py) keep the raw pixel order and PIL's ``convert('RGB')``, as the
original and the peers read them, since label PNGs are stored in that order. A photo is different:
a phone stores a portrait as a landscape sensor image plus an EXIF orientation tag, and 16-bit or
float images would be clipped to white by ``convert('RGB')``.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data.spec import DataError

# What makes a file an image: its extension (any case). Formats PIL cannot decode (HEIC without a
# plugin) are listed too, so that such photos are reported as unreadable, not skipped unseen.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .bmp .dib .gif .tif .tiff .webp .avif .heic .heif .jp2 .j2k .jpx "
    ".ppm .pgm .pbm .pnm .tga .qoi .ico .psd .sgi".split()
)
# Every PNG the project's tools write carries this text chunk: an existing file without it is the
# user's own and is never replaced, and a scan never takes the project's outputs for photos.
OUTPUT_MARK = ("Software", "iddc predict.py")

# Modes whose values go beyond 0..255: scaled to 8 bits instead of clipped.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that shows the image upright (EXIF 2.32, tag 274).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_SIDES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
)


def display_path(path):
    """A path as text for logs and lists: ``/`` separators, undecodable bytes of a file name (kept
    by Python as surrogates) written ``\\xNN``."""
    return escape_undecodable(Path(path).as_posix())


def escape_undecodable(text):
    """``text`` with the undecodable bytes of file names (kept by Python as surrogates) written ``\\xNN``."""
    return "".join(f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else char for char in text)


def written_by_iddc(path):
    """Whether ``path`` is a PNG one of the project's tools wrote (it carries OUTPUT_MARK)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get(OUTPUT_MARK[0]) == OUTPUT_MARK[1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


@dataclass
class FolderScan:
    """What :func:`scan_images` found under a root; paths are relative to it, sorted."""

    root: Path
    images: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # files that are not images by their extension
    outputs: list = field(default_factory=list)  # PNGs the project's tools wrote (OUTPUT_MARK)
    unreadable_dirs: list = field(default_factory=list)  # (relative folder, reason)


def scan_images(root, exclude_top=(), check_stems=True, recursive=True):
    """Every image under ``root`` at any depth (``recursive``; else its own files only), by
    extension (any case), without decoding.

    Hidden files and folders (a leading dot) are ignored, as are the top-level folders named in
    ``exclude_top`` (the ``folder`` dataset's ``labels/``) and the PNGs the project wrote. Folders
    reached through symbolic links are followed once (a link loop does not loop); a folder that
    cannot be listed is recorded and skipped. Two images of one folder with one stem (``x.jpg``,
    ``x.png``) would share every output name: with ``check_stems`` that is a DataError naming both.
    """
    root = Path(root)
    scan = FolderScan(root)
    seen_dirs = set()

    def walk(folder, relative):
        try:
            real = os.path.realpath(folder)
            if real in seen_dirs:
                return
            seen_dirs.add(real)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: os.fsencode(entry.name))
        except OSError as err:
            scan.unreadable_dirs.append((relative, err.strerror or str(err)))
            return
        stems = {}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = relative / entry.name
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir:
                if recursive and not (relative == Path() and entry.name in exclude_top):
                    walk(Path(entry.path), child)
            elif is_file:
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    scan.skipped.append(child)
                elif entry.name.lower().endswith(".png") and written_by_iddc(entry.path):  # only PNGs carry it
                    scan.outputs.append(child)
                else:
                    stem = Path(entry.name).stem
                    if check_stems and stem in stems:
                        raise DataError(
                            f"{root / stems[stem]} and {root / child}: two images in one folder with the stem "
                            f"{display_path(stem)!r}; their outputs would share one name: rename one"
                        )
                    stems[stem] = child
                    scan.images.append(child)

    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    walk(root, Path())
    scan.images.sort(key=lambda path: os.fsencode(str(path)))
    return scan


def working_size(width, height, short_side=None):
    """(width, height) at the working size: an image whose short side is above ``short_side`` is
    scaled down so that it is ``short_side`` (aspect kept); smaller images, or no ``short_side``,
    keep their size."""
    short = min(width, height)
    if not short_side or short <= short_side:
        return width, height
    scale = short_side / short
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def read_photo(path, short_side=None):
    """(RGB PIL image at the working size, (width, height) of the upright original).

    As a viewer shows it: EXIF orientation applied, every mode converted to 8-bit RGB. 16-bit
    greyscale is scaled by 1/257 (65535 -> 255); 32-bit integer images the same when their values
    exceed 255; float images in 0..1 are scaled by 255 (others clipped to 0..255); transparency is
    composited over white, as on a web page. With ``short_side`` a large JPEG is decoded at a
    reduced scale (Pillow's draft mode, the JPEG decoder's 1/2, 1/4 or 1/8, never below the working
    size) and then resized (bilinear) to the working size, so a 12 MP photo costs a fraction of a
    full decode.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            upright = UPRIGHT.get(_orientation(image))
            swap = upright in SWAPS_SIDES
            stored_w, stored_h = image.size
            original = (stored_h, stored_w) if swap else (stored_w, stored_h)
            target = working_size(*original, short_side)
            if target != original and image.format == "JPEG":
                stored_target = (target[1], target[0]) if swap else target
                image.draft("RGB", stored_target)
            image.load()
            rgb = to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from err
    rgb = rgb.transpose(upright) if upright is not None else rgb
    if rgb.size != target:
        rgb = rgb.resize(target, Image.BILINEAR)
    return rgb, original


def header_size(path):
    """(width, height) of the upright image from its header alone (no decoding); raises what PIL
    raises for a file it cannot open."""
    with Image.open(path) as image:
        width, height = image.size
        return (height, width) if UPRIGHT.get(_orientation(image)) in SWAPS_SIDES else (width, height)


def open_photo(path):
    """RGB PIL image at full size, as a viewer shows it (see :func:`read_photo`)."""
    return read_photo(path)[0]


def _orientation(image):
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: show the pixels as stored
        return None


def to_rgb(image):
    """8-bit RGB of any PIL mode, scaling wide modes and compositing transparency over white."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            values = values * 255 if values.size and np.nanmax(values) <= 1.0 else values
        elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
            values = values / 257
        grey = np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
