"""Logging set-up, the git commit of the code, and logs of every logged value (JSON lines, TensorBoard)."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from utils import distributed

REPO_ROOT = Path(__file__).resolve().parents[1]


def setup_logger(name="iddc", log_file=None):
    """Readable lines on stdout (rank 0 only) and, when given, in ``log_file``."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if log_file is not None and distributed.is_main():
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def git_commit():
    """The commit of the code that ran, with '+dirty' when there are uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class JsonlLog:
    """Appends one JSON object per call; only rank 0 writes."""

    def __init__(self, path):
        self.path = Path(path)

    def write(self, **values):
        if not distributed.is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(values, default=float) + "\n")

    def drop_after(self, step):
        """Forget the rows of work beyond ``step`` (a resumed run redoes it): train and val rows of
        later steps, and the final evaluation. Rewritten atomically; rank 0 only."""
        if not distributed.is_main() or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", float("inf")) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

class TensorboardLog:
    """TensorBoard scalars from the same ``write(kind=..., **values)`` calls as :class:`JsonlLog`.

    Every number becomes the scalar ``<kind>/<name>`` (dicts: ``<kind>/<name>/<key>``, e.g.
    ``val/per_class_iou/sky``) at the row's ``step`` (else its ``epoch``, else the last step seen);
    strings are skipped. ``write_pictures`` adds image | ground truth | prediction panels. Only
    rank 0 writes.
    """

    def __init__(self, log_dir):
        self.writer = None
        self._step = 0
        if distributed.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, kind, **values):
        if self.writer is None:
            return
        step = values.get("step", values.get("epoch", self._step))
        self._step = step
        for name, value in values.items():
            if name in ("step", "epoch"):
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for key, number in items:
                if isinstance(number, bool) or not isinstance(number, (int, float)):
                    continue
                self.writer.add_scalar(f"{kind}/{name}" + (f"/{key}" if key is not None else ""), number, step)
        self.writer.flush()

    def pictures(self, palette, num_images=4):
        """A collector to pass as ``evaluate(..., on_image=...)``: it keeps the first images, to be
        drawn in the dataset's ``palette``."""
        from utils.visualize import VisualCollector

        return VisualCollector(num_images if self.writer is not None else 0, palette)

    def write_pictures(self, collector, cluster_to_class, step, tag="val"):
        """One image | ground truth | matched prediction panel per collected image."""
        if self.writer is None:
            return
        from utils.visualize import colorize, map_clusters, side_by_side

        for image_id, image, label, pred in collector.items:
            panel = side_by_side(image, colorize(label, collector.palette),
                                 colorize(map_clusters(pred, cluster_to_class), collector.palette))
            self.writer.add_image(f"{tag}/{image_id}", np.asarray(panel), step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


class LogGroup:
    """Several logs fed by one ``write(**values)`` call (e.g. log.jsonl and TensorBoard)."""

    def __init__(self, *logs):
        self.logs = logs

    def write(self, **values):
        for log in self.logs:
            log.write(**values)
