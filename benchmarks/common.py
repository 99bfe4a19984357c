"""What the benchmarks share: synthetic data in temporary folders, the randomly initialised backbone
they run (speed and memory do not depend on the weights), timing, and the one measure of peak memory.

Every benchmark is a command of the project's contract (utils/cli.py): its parser is
``utils.cli.ArgumentParser`` (no abbreviations, one ``error:`` line and exit 2, ``--debug``), its
``main`` is an ``@entry_point``, and its options are checked before any data is written. Run them
as ``python benchmarks/bench_X.py`` or ``python -m benchmarks.bench_X``.
"""

import contextlib
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.peak_memory import reset_resident_high_water, resident_high_water
from data.synthetic import write_synthetic_cityscapes, write_synthetic_cocostuff
from modules.model import IDDCModel
from modules.vit import VisionTransformer
from utils.cli import check_at_least


def check_counts(args, minimums):
    """Each option of ``minimums`` ({"--images": 1, ...}) holds an integer of at least its minimum."""
    for option, minimum in minimums.items():
        check_at_least(getattr(args, option[2:].replace("-", "_")), option, minimum)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Wall seconds of ``fn()``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class TimedBackbone(torch.nn.Module):
    """Wraps the ViT and adds up the seconds spent in it (synchronised on CUDA)."""

    def __init__(self, vit):
        super().__init__()
        self.inner = vit
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, images):
        sync(images.device)
        start = time.perf_counter()
        out = self.inner(images)
        sync(images.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def random_vit(patch_size=16, seed=0):
    """A full-size ViT-S of DINO's shape with random weights, the same for a given ``seed``."""
    torch.manual_seed(seed)
    return VisionTransformer(patch_size=patch_size)


def random_model(patch_size=16, device="cpu"):
    """An IDDC model (27 clusters) on a random ViT-S, in eval mode."""
    return IDDCModel(random_vit(patch_size)).to(device).eval()


@contextlib.contextmanager
def temporary_folder(name):
    """A new folder, removed with everything in it when the block ends (also on an error or Ctrl-C)."""
    with tempfile.TemporaryDirectory(prefix=f"iddc_{name}_") as folder:
        yield Path(folder)


@contextlib.contextmanager
def synthetic_dataset(dataset, split, count, sizes):
    """``count`` synthetic scenes of ``split`` in the layout of ``dataset`` (cocostuff27 or
    cityscapes27) in a temporary folder; yields (data root, ids). ``sizes`` are (width, height),
    cycled over the images (Cityscapes: the first for every image)."""
    counts = {"num_train": count if split == "train" else 0, "num_val": count if split == "val" else 0}
    with temporary_folder(dataset) as root:
        if dataset == "cocostuff27":
            ids = write_synthetic_cocostuff(root, sizes=sizes, **counts)
        elif dataset == "cityscapes27":
            ids = write_synthetic_cityscapes(root, size=sizes[0], **counts)
        else:
            raise ValueError(f"no synthetic data for {dataset!r}; expected cocostuff27 or cityscapes27")
        yield root, ids[split]


class PeakMemory:
    """Memory used at the most during a ``with`` block above what was in use when it began:
    ``peak``, in bytes. The benchmarks' one measure of memory.

    On CUDA the most allocated by tensors on the device (``torch.cuda.max_memory_allocated``). On
    the CPU the resident high-water mark of this process (benchmarks/peak_memory.py), reset when the
    block begins: threads are counted, child processes (data-loading workers) are not. ``peak`` is
    None where the kernel offers no reset (not Linux).
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.start = None
        self.peak = None

    def __enter__(self):
        sync(self.device)
        if self.device.type == "cuda":
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.start = reset_resident_high_water()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.start is not None:
            self.peak = resident_high_water() - self.start
        return False


def mib(num_bytes, width=0):
    """Bytes as MiB for a table, or "n/a" when not measured."""
    return f"{'n/a':>{width}}" if num_bytes is None else f"{num_bytes / 2**20:{width}.1f}"
