"""Dense CRF post-processing as the peers apply it, run in worker processes beside the forwards.

The peers' CRF numbers (STEGO, HP, CAUSE) come from STEGO's ``dense_crf`` (mhamilton723/STEGO,
``src/crf.py``); this module follows it deliberately, detail for detail:

- the image is the network input un-normalised (x * std + mean per channel, in float32), scaled by
  255 and truncated to uint8 (torchvision's ``to_pil_image`` on a float tensor), in BGR order;
- the unary is ``-log(clip(p, 1e-5, 1))`` of per-pixel probabilities at the image's size
  (pydensecrf's ``unary_from_softmax``); STEGO gets them from bilinearly upsampled logits (align
  corners False) and a softmax, which is what the protocols here compute too;
- 10 mean-field iterations, a Gaussian kernel (sxy 1, compat 3) and a bilateral kernel (sxy 67,
  srgb 3, compat 4); the prediction is the argmax of the result.

Where STEGO feeds its cluster log-probabilities, IDDC feeds the softmax of its classifier logits at
temperature 1. Sliding-window predictions are refined at the (stitched) image size; an image of
more than ``max_pixels`` pixels is refined on a copy downscaled to fit (bilinear, antialiased)
and the map brought back with nearest upsampling, so that one CRF never needs more than a few
hundred MB. COCO-Stuff images (at most 640x640) are never downscaled with the default.
"""

import collections
import multiprocessing
import os
import signal

import numpy as np
import torch
import torch.nn.functional as F

from utils.constants import IMAGENET_MEAN, IMAGENET_STD
from utils.optional import require

MAX_ITERATIONS = 10
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 1, 3
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 67, 3, 4
# As requirements.txt pins it: the version the peers' numbers were reproduced with.
PYDENSECRF_REQUIREMENT = "pydensecrf2==1.1"
# About 1 megapixel: with 27 classes one CRF then holds roughly 0.6 GB.
DEFAULT_MAX_PIXELS = 1 << 20


def require_pydensecrf():
    """Fail with the install command unless pydensecrf imports; entry points call it with their
    option checks, before any model is loaded. (pydensecrf2 builds from source on install: it
    needs g++ and the Python headers.)"""
    require("pydensecrf.densecrf", PYDENSECRF_REQUIREMENT, "--crf (the dense CRF)")


def default_workers():
    """CRF processes when none are asked for: the CPU cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def crf_image(normalized):
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 BGR array, as STEGO rebuilds the image."""
    image = normalized.detach().float().cpu().clone()  # (3, H, W)
    for channel, mean, std in zip(image, IMAGENET_MEAN, IMAGENET_STD):
        channel.mul_(std).add_(mean)
    # x * 255 truncated to uint8 as to_pil_image does; the clip only defines values outside [0, 1].
    pixels = np.clip(image.permute(1, 2, 0).numpy() * 255, 0, 255).astype(np.uint8)  # (H, W, 3) RGB
    return np.ascontiguousarray(pixels[:, :, ::-1])  # (H, W, 3) BGR


def dense_crf(image_bgr, probs):
    """Mean-field marginals (K, H, W) float32 of a (K, H, W) probability map over a BGR uint8 image."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    num_classes, height, width = probs.shape
    if image_bgr.shape != (height, width, 3) or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"CRF image must be ({height}, {width}, 3) uint8 to match the probabilities, "
            f"got {image_bgr.shape} {image_bgr.dtype}"
        )
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))  # (K, H*W) float32
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=image_bgr, compat=BILATERAL_COMPAT)
    return np.array(crf.inference(MAX_ITERATIONS), dtype=np.float32).reshape(num_classes, height, width)


def crf_maps(image_bgr, probs, heads=1):
    """Class maps (heads, H, W) int32 after a CRF of each head's (K, H, W) probabilities; ``heads``
    is a count of equal heads or the list of each head's channels."""
    widths = [probs.shape[0] // heads] * heads if isinstance(heads, int) else list(heads)
    per_head = np.split(probs, np.cumsum(widths)[:-1])  # [(K, H, W)] one per head
    return np.stack([dense_crf(image_bgr, np.ascontiguousarray(head)).argmax(axis=0) for head in per_head]).astype(
        np.int32
    )


def fit_size(height, width, max_pixels):
    """(h, w) with aspect kept and h * w <= max_pixels (the size itself when it already fits)."""
    if height * width <= max_pixels:
        return height, width
    scale = (max_pixels / (height * width)) ** 0.5
    return max(1, int(height * scale)), max(1, int(width * scale))


def crf_inputs(image, probs, max_pixels=DEFAULT_MAX_PIXELS):
    """(BGR image, float32 probabilities) for :func:`crf_maps`, downscaled when over ``max_pixels``."""
    size = fit_size(*probs.shape[-2:], max_pixels)
    if size != tuple(probs.shape[-2:]):
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        probs = F.interpolate(probs[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return crf_image(image), probs.detach().float().cpu().numpy()  # (h, w, 3), (heads * K, h, w)


class CRFPool:
    """Dense CRFs in worker processes, so the caller's next forwards run while they are computed.

    ``submit`` queues one image and returns at once; ``finished`` hands back results in submission
    order, waiting for the oldest ones while more than ``max_pending`` are outstanding (which bounds
    the memory held by queued probability maps). ``workers=0`` computes each CRF in ``submit``, in
    this process. Workers are forked where the platform can (as torch's DataLoader workers): they
    start at once and run only numpy and pydensecrf, which use neither OpenMP nor CUDA; spawned
    workers would first import torch and the entry point again (seconds each on a busy machine).
    """

    def __init__(self, workers=None, heads=1, max_pixels=DEFAULT_MAX_PIXELS, max_pending=None):
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"--crf-workers must be >= 0, got {self.workers}")
        require_pydensecrf()  # checked here too, before any image is queued
        self.heads = heads
        self.max_pixels = max_pixels
        self.max_pending = max_pending or 2 * max(1, self.workers)
        self._pool = start_pool(self.workers) if self.workers else None
        self._pending = collections.deque()

    def submit(self, image, probs, key):
        """Queue the CRF of ``probs`` (heads * K, H, W) over the normalised ``image`` (3, H, W);
        ``key`` comes back with the maps."""
        size = tuple(probs.shape[-2:])
        if tuple(image.shape[-2:]) != size:
            raise ValueError(f"CRF: image {tuple(image.shape[-2:])} and probabilities {size} differ in size")
        image_bgr, probs_np = crf_inputs(image, probs, self.max_pixels)
        if self._pool is None:
            result = _Done(crf_maps(image_bgr, probs_np, self.heads))
        else:
            result = self._pool.apply_async(crf_maps, (image_bgr, probs_np, self.heads))
        self._pending.append((key, size, result))

    def finished(self, wait_all=False):
        """[(key, maps (heads, H, W) long tensor)] of the oldest finished CRFs, in submission order."""
        done = []
        while self._pending:
            key, size, result = self._pending[0]
            if not (wait_all or len(self._pending) > self.max_pending or result.ready()):
                break
            self._pending.popleft()
            maps = torch.from_numpy(result.get()).long()  # (heads, h, w)
            if tuple(maps.shape[-2:]) != size:
                maps = F.interpolate(maps[None].float(), size=size, mode="nearest")[0].long()  # (heads, H, W)
            done.append((key, maps))
        return done

    def close(self, stop_now=False):
        """Let the workers end once their queue is empty, or with ``stop_now`` (an error) end them
        at once by SIGTERM."""
        if self._pool is not None:
            if stop_now:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(stop_now=exc_type is not None)


def start_pool(workers):
    """A pool of ``workers`` processes that SIGTERM always ends.

    The commands catch SIGTERM in Python (utils/cli.py), and forked workers inherit that handler.
    A SIGTERM that reaches a worker between its fork and the interpreter's after-fork reset is
    dropped with the handler's pending flag, and the worker then waits on the task queue forever
    while ``Pool.terminate()`` joins it (seen when an error closed the pool just after it
    started). So SIGTERM is blocked in this thread while the workers are forked, and each worker
    restores the default action before it unblocks the signal: one sent early stays pending until
    then and ends the worker as by default.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if not hasattr(signal, "pthread_sigmask"):
        return multiprocessing.get_context(method).Pool(workers)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return multiprocessing.get_context(method).Pool(workers, initializer=_worker_sigterm_default)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _worker_sigterm_default():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


class _Done:
    """A result computed in this process, with the ready()/get() of an AsyncResult."""

    def __init__(self, value):
        self._value = value

    def ready(self):
        return True

    def get(self):
        return self._value
