"""TensorBoard logging of training runs: scalars and the dataset's coloured pictures."""

import threading

import numpy as np

from engine.visualize import VisualCollector, colorize, map_clusters, side_by_side
from utils import distributed
from utils.files import reporting_disk_full
from utils.optional import require

TENSORBOARD_REQUIREMENT = "tensorboard>=2.14"


def require_tensorboard():
    """Fail with the install command unless tensorboard imports (train.py checks it before writing)."""
    require("tensorboard", TENSORBOARD_REQUIREMENT, "TensorBoard logging (train.py)")


class TensorboardLog:
    """TensorBoard scalars from the same ``write(kind=..., **values)`` calls as :class:`JsonlLog`.

    Every number becomes the scalar ``<kind>/<name>`` (dicts: ``<kind>/<name>/<key>``, e.g.
    ``val/per_class_iou/sky``) at the row's ``step`` (else its ``epoch``, else the last step seen);
    strings are skipped. ``write_pictures`` adds image | ground truth | prediction panels. Only
    rank 0 writes.
    """

    def __init__(self, log_dir):
        self.writer = None
        self.log_dir = log_dir
        self._step = 0
        if distributed.is_main():
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            _quiet_writer_threads()
            with reporting_disk_full(log_dir):
                self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, kind, **values):
        if self.writer is None:
            return
        step = values.get("step", values.get("epoch", self._step))
        self._step = step
        scalars = {}
        for name, value in values.items():
            if name in ("step", "epoch"):
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for key, number in items:
                if not isinstance(number, bool) and isinstance(number, (int, float)):
                    scalars[f"{kind}/{name}" + (f"/{key}" if key is not None else "")] = number
        with reporting_disk_full(self.log_dir):  # the writer thread's error comes back at the next call
            for tag, number in scalars.items():
                self.writer.add_scalar(tag, number, step)
            self.writer.flush()

    def pictures(self, palette, num_images=4):
        """A collector to pass as ``evaluate(..., on_image=...)``: it keeps the first images, to be
        drawn in the dataset's ``palette``."""
        return VisualCollector(num_images if self.writer is not None else 0, palette)

    def write_pictures(self, collector, cluster_to_class, step, tag="val"):
        """One image | ground truth | matched prediction panel per collected image."""
        if self.writer is None:
            return
        panels = {
            image_id: side_by_side(
                image,
                colorize(label, collector.palette),
                colorize(map_clusters(pred, cluster_to_class), collector.palette),
            )
            for image_id, image, label, pred in collector.items
        }
        with reporting_disk_full(self.log_dir):
            for image_id, panel in panels.items():
                self.writer.add_image(f"{tag}/{image_id}", np.asarray(panel), step, dataformats="HWC")
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            with reporting_disk_full(self.log_dir):
                self.writer.close()


def _quiet_writer_threads():
    """No traceback from TensorBoard's writer thread when its write fails (a full disk): the
    thread keeps the error, and the next write or flush raises it in the main thread, which
    reports it as one line."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def excepthook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    excepthook.quiets_tensorboard = True
    threading.excepthook = excepthook
