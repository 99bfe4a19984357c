"""People's own images, read as an image viewer shows them (predict.py).

Dataset readers (data/cocostuff.py) keep the raw pixel order and PIL's ``convert('RGB')``, as the
original and the peers read them, since label PNGs are stored in that order. A photo is different:
a phone stores a portrait as a landscape sensor image plus an EXIF orientation tag, and 16-bit or
float images would be clipped to white by ``convert('RGB')``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from data.spec import DataError

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


def open_photo(path):
    """RGB PIL image as a viewer shows it: EXIF orientation applied, every mode converted to 8-bit RGB.

    16-bit greyscale is scaled by 1/257 (65535 -> 255); 32-bit integer images the same when their
    values exceed 255; float images in 0..1 are scaled by 255 (others clipped to 0..255);
    transparency is composited over white, as on a web page.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
            upright = UPRIGHT.get(_orientation(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from err
    return rgb.transpose(upright) if upright is not None else rgb


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
