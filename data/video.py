"""Video clips as predict.py reads them: any container and codec the PyAV wheel decodes, frame by
frame, each frame an RGB image as an image file of it would be read (docs/predicting.md#video).
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from data.photos import OUTPUT_MARK
from data.spec import DataError
from utils.optional import require

# What makes a file named in --input a video: its extension (any case). In an input folder a video
# is listed as skipped, as any file that is not an image: a clip is segmented when named directly.
VIDEO_EXTENSIONS = frozenset(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .wmv .flv .3gp .ts .mts .m2ts .ogv".split())


def is_video(path):
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoInfo:
    """A clip's first video stream: frame size and average frame rate (frames per second)."""

    width: int
    height: int
    rate: Fraction


def require_av():
    """PyAV, or the one-line error that says how to install it."""
    return require("av", "av>=14", "reading and writing videos (predict.py --input CLIP)")


def video_written_by_iddc(path):
    """Whether ``path`` is a video predict.py wrote (its container's comment is OUTPUT_MARK's text)."""
    av = require_av()
    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment") == OUTPUT_MARK[1]
    except _decode_errors(av):
        return False


def _decode_errors(av):
    return (av.FFmpegError, OSError, ValueError, IndexError, EOFError)


def video_info(path):
    """The :class:`VideoInfo` of ``path``; a file PyAV cannot open, or one without a video stream,
    is a DataError worded as an undecodable image's."""
    av = require_av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(rate))
    except _decode_errors(av) as err:
        raise DataError(f"{path}: cannot read the video ({err})") from err


def read_frames(path, every=1):
    """(source frame number from 0, RGB PIL image) of every ``every``-th frame of ``path``, decoded
    one at a time (memory does not grow with the clip's length). A clip that stops decoding is a
    DataError naming it and the frame."""
    av = require_av()
    index = -1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index % every == 0:
                    yield index, frame.to_image()  # (H, W) RGB
    except _decode_errors(av) as err:
        where = f" after frame {index}" if index >= 0 else ""
        raise DataError(f"{path}: cannot read the video{where} ({err})") from err
