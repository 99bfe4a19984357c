"""Evaluation: named protocols, the sliding-window predictor and the one ``evaluate()``.

``evaluate()`` serves validation during training and eval.py alike; its window, overlap, flip and
scoring size are explicit arguments, and the named protocols only choose their values.

A model may stack several heads' logits along the channels (``head_widths``: the channels of each
head, e.g. K clusters then C classes of the linear probe; by default ``num_heads`` groups of
``num_classes``), so that training scores the clusters and the linear probe from one backbone pass;
softmax and argmax then work within each group. A head's K need not be the dataset's class count C:
its confusion is C x K (engine/metrics.py).

``precision`` "fp32" runs the forwards in IEEE float32, TF32 off on GPUs (utils/precision.py), so
that fp32 results do not depend on the GPU generation.
"""

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.registry import DEFAULT_DATASET, get_dataset
from data.spec import SegmentationEval
from data.transforms import CenterCropTransform, PhotoTransform, ResizeTransform, SlidingTransform
from engine.crf import CRFPool
from engine.metrics import clustering_metrics, confusion_matrix
from utils import distributed
from utils.cli import quiet_hangups, sigint_held
from utils.precision import inference_context


@dataclass(frozen=True)
class Protocol:
    """What an evaluation does; ``window`` None means one forward over the whole (resized) image."""

    name: str
    window: int = None
    overlap: int = 0
    flip: bool = False
    score_size: tuple = (320, 320)
    input_size: int = None
    image_interpolation: str = "bilinear"
    align_corners: bool = False
    crf: bool = False

    def transform(self):
        if self.name == "sliding":
            return SlidingTransform(self.window)
        if self.name == "photo":
            return PhotoTransform(self.window)
        if self.name == "resize320":
            return ResizeTransform(self.input_size)
        return CenterCropTransform(self.input_size, self.image_interpolation)


PROTOCOLS = ("sliding", "resize320", "center320")  # the benchmarks' protocols
ALL_PROTOCOLS = (*PROTOCOLS, "photo")  # and the folder dataset's (eval.py, train.py)


def make_protocol(
    name, flip=None, window=224, overlap=75, score_size=(320, 320), image_interpolation="nearest", crf=False
):
    """The published protocol (sliding), the original's per-epoch validation (resize320) and the
    peers' centre crop (center320); photo: the sliding windows on the image as read (the ``folder``
    dataset: at its working size), the maps brought back to each label's size (legacy nearest) and
    scored there, as predict.py's maps (engine/segment.py); ``flip`` None keeps each protocol's own default; ``crf``
    refines the probabilities with STEGO's dense CRF (engine/crf.py) before the argmax."""
    if name == "sliding":
        # SPEC §5: 224 windows, overlap 75, flip averaging, scored at 320x320 (legacy nearest).
        return Protocol(
            "sliding",
            window=window,
            overlap=overlap,
            flip=True if flip is None else flip,
            score_size=tuple(score_size),
            crf=crf,
        )
    if name == "photo":
        return Protocol(
            "photo", window=window, overlap=overlap, flip=True if flip is None else flip, score_size=None, crf=crf
        )
    if name == "resize320":
        # The original's val_mode 2: one forward at 320x320, no flip, scored at 320.
        return Protocol("resize320", flip=bool(flip), score_size=(320, 320), input_size=320, crf=crf)
    if name == "center320":
        return Protocol(
            "center320",
            flip=bool(flip),
            score_size=(320, 320),
            input_size=320,
            image_interpolation=image_interpolation,
            crf=crf,
        )
    raise ValueError(f"--protocol must be one of {ALL_PROTOCOLS}, got {name!r}")


def window_starts(length, window, stride):
    """Start offsets along one axis: ceil((L - window) / stride + 1) windows, the last flush with the end."""
    count = math.ceil((length - window) / stride + 1)
    return [min(k * stride, length - window) for k in range(count)]


def window_boxes(height, width, window, overlap):
    """(top, left) of every window, row-major, as the original's ``slidding_val``."""
    if height < window or width < window:
        raise ValueError(f"image {height}x{width} is smaller than the {window} window; upscale it first")
    stride = window - overlap
    return [
        (top, left) for top in window_starts(height, window, stride) for left in window_starts(width, window, stride)
    ]


def cluster_logits(model, images, precision, batch_size):
    """Classifier logits in fp32, with the batch cut into forwards of at most ``batch_size`` images."""
    outputs = []
    with inference_context(images.device, precision):
        for chunk in images.split(batch_size):
            outputs.append(model(chunk)[2].float())  # (b, K, h, w)
    return torch.cat(outputs)


def flip_averaged_logits(model, images, flip, precision, batch_size):
    """(f(x) + flip(f(flip(x)))) / 2 at patch resolution, with x and its flip in the same forwards."""
    if not flip:
        return cluster_logits(model, images, precision, batch_size)
    both = cluster_logits(model, torch.cat((images, images.flip(dims=[3]))), precision, batch_size)  # (2n, K, h, w)
    plain, flipped = both.split(images.shape[0])
    return (plain + flipped.flip(dims=[3])) / 2  # (n, K, h, w)


def head_widths(model):
    """The channels of each head stacked in the model's logits: its ``head_widths``, else
    ``num_heads`` (default 1) heads of ``num_classes``."""
    widths = getattr(model, "head_widths", None)
    return list(widths) if widths else [model.num_classes] * getattr(model, "num_heads", 1)


def softmax_per_head(logits, widths):
    """Softmax over each head's channels of (n, sum(widths), H, W) logits."""
    if len(set(widths)) == 1:  # equal heads: one softmax over a view, as every benchmark head
        n, heads = logits.shape[0], len(widths)
        return logits.view(n, heads, widths[0], *logits.shape[2:]).softmax(dim=2).view_as(logits)
    return torch.cat([part.softmax(dim=1) for part in logits.split(widths, dim=1)], dim=1)


def argmax_per_head(probs, widths):
    """(sum(widths), H, W) probabilities -> (heads, H, W) class maps.

    ``max(dim).indices`` is argmax (the first maximal index, NaN first too) computed 5x faster
    than ``argmax(dim)`` over a non-innermost dimension on CPU (torch 2.x).
    """
    if len(set(widths)) == 1:
        return probs.view(len(widths), widths[0], *probs.shape[1:]).max(dim=1).indices
    return torch.stack([part.max(dim=0).indices for part in probs.split(widths)])


def sliding_probabilities(model, image, window, overlap, flip, precision, batch_size):
    """Per-pixel cluster probabilities (K, H, W) of one image by overlapping windows (SPEC §5)."""
    return sliding_probabilities_many(model, [image], window, overlap, flip, precision, batch_size)[0]


def sliding_probabilities_many(model, images, window, overlap, flip, precision, batch_size):
    """Sliding-window probabilities (K, H, W) of several images, their windows sharing backbone forwards.

    For callers that want the probabilities themselves; a class map needs only
    :func:`sliding_class_maps`, which never holds a full-resolution K-channel array.
    """
    per_image = sliding_bands_many(model, images, window, overlap, flip, precision, batch_size)
    return [torch.cat([band for _, band in bands], dim=1) for bands in per_image]


def sliding_class_maps(model, images, window, overlap, flip, precision, batch_size):
    """Class maps (heads, H, W) of several images by the sliding protocol, band by band.

    The maps are uint8 when the classes fit (a 4032x3024 int64 map alone is 98 MB).
    """
    widths = head_widths(model)
    dtype = torch.uint8 if max(widths) <= 256 else torch.int64
    per_image = sliding_bands_many(model, images, window, overlap, flip, precision, batch_size)
    return [torch.cat([argmax_per_head(band, widths).to(dtype) for _, band in bands], dim=1) for bands in per_image]


def sliding_bands_many(model, images, window, overlap, flip, precision, batch_size):
    """For each image, a generator of its finished horizontal bands ``(first row, (K, rows, W))``.

    The windows of all images share backbone forwards, exactly as if their crops (then their
    flips) were stacked and cut into batches of ``batch_size``, while only one batch of crops
    exists at a time. Logits at patch resolution are small (K x 14 x 14 a window) and are kept for
    every window; the full-resolution work is left to :func:`stitch_bands`. The window must be a
    multiple of the patch (224 is one of 8, 14 and 16).
    """
    patch_size = getattr(model, "patch_size", 1)
    if window % patch_size:
        raise ValueError(f"--window {window} is not a multiple of the backbone's patch size {patch_size}")
    boxes = [window_boxes(image.shape[1], image.shape[2], window, overlap) for image in images]
    logits = window_logits(model, images, boxes, window, flip, precision, batch_size)  # (n, K, h, w)
    if precision != "fp32":
        # The classifier (a 1x1 conv) returns channels-last logits on CPU; the softmax over
        # channels then copies every upsampled window to NCHW first. fp32 keeps that path, which
        # defines its published results bit for bit; bf16, whose results differ anyway, upsamples
        # NCHW logits and skips the copy (with the rest, 3x less post-processing time).
        logits = logits.contiguous()
    counts = [len(image_boxes) for image_boxes in boxes]
    return [
        stitch_bands(image_logits, image_boxes, image.shape[1:], window, head_widths(model))
        for image, image_boxes, image_logits in zip(images, boxes, logits.split(counts))
    ]


def window_logits(model, images, boxes, window, flip, precision, batch_size):
    """Flip-averaged logits (n, K, h, w) of every window of every image, row-major per image.

    Forward batches are those of ``flip_averaged_logits`` on all crops at once (crops first, then
    their flips, cut every ``batch_size``), so the logits are the same; crops are cut per batch.
    """
    places = [(index, top, left) for index, image_boxes in enumerate(boxes) for top, left in image_boxes]
    copies = (False, True) if flip else (False,)
    order = [(place, flipped) for flipped in copies for place in places]
    outputs = []
    with inference_context(images[0].device, precision):
        for start in range(0, len(order), batch_size):
            crops = torch.stack(
                [
                    _crop(images[index], top, left, window, flipped)
                    for (index, top, left), flipped in order[start : start + batch_size]
                ]
            )  # (b, 3, w, w)
            outputs.append(model(crops)[2].float())  # (b, K, h, w)
    logits = torch.cat(outputs)  # (n or 2n, K, h, w)
    if not flip:
        return logits
    plain, flipped = logits.split(len(places))
    return (plain + flipped.flip(dims=[3])) / 2  # (n, K, h, w)


def _crop(image, top, left, window, flipped):
    crop = image[:, top : top + window, left : left + window]  # (3, w, w)
    return crop.flip(dims=[2]) if flipped else crop


# Windows upsampled (and turned into probabilities) at once: K x 224 x 224 fp32 is 5.4 MB a window.
WINDOWS_PER_UPSAMPLE = 8


def stitch_bands(logits, boxes, size, window, widths=None):
    """Average the windows' probabilities, yielding finished bands ``(first row, (K, rows, W))``.

    Each window's logits are upsampled to the window (bilinear, align_corners False) and turned
    into probabilities; the probabilities are summed where windows overlap and divided by the
    number of windows. Windows are added one window row at a time: rows above the next row's top
    are touched by no later window, so they are final and leave as a band. Every pixel receives its
    windows in the same (row-major) order as summing over the whole image, so the results are
    identical, while at most one window-height band of sums (K x 224 x W) is alive instead of the
    full-resolution K x H x W sum. ``widths``: the channels of each head (default: one head).
    """
    widths = widths or [logits.shape[1]]
    height, width = size
    tops = sorted({top for top, _ in boxes})
    lefts = sorted({left for _, left in boxes})
    row_cover = torch.zeros(height, dtype=logits.dtype, device=logits.device)
    col_cover = torch.zeros(width, dtype=logits.dtype, device=logits.device)
    for top in tops:
        row_cover[top : top + window] += 1
    for left in lefts:
        col_cover[left : left + window] += 1
    count = row_cover[:, None] * col_cover[None, :]  # (H, W) windows covering each pixel
    sums = logits.new_zeros((logits.shape[1], window, width))  # (K, w, W), rows base .. base + w
    base = tops[0]
    for top in tops:
        if top > base:
            done = top - base
            yield base, sums[:, :done].div_(count[base:top])  # (K, done, W), in place: no later window writes there
            sums = torch.cat((sums[:, done:], sums.new_zeros((sums.shape[0], done, width))), dim=1)
            base = top
        in_row = [(index, left) for index, (row_top, left) in enumerate(boxes) if row_top == top]
        for start in range(0, len(in_row), WINDOWS_PER_UPSAMPLE):
            chunk = in_row[start : start + WINDOWS_PER_UPSAMPLE]
            chunk_logits = logits[[index for index, _ in chunk]]  # (c, K, h, w)
            upsampled = F.interpolate(chunk_logits, size=(window, window), mode="bilinear", align_corners=False)
            probs = softmax_per_head(upsampled, widths)  # (c, K, w, w)
            for (_, left), prob in zip(chunk, probs):
                sums[:, :, left : left + window] += prob
    yield base, sums[:, : height - base].div_(count[base:])  # (K, H - base, W)


def forward_size(size, patch_size):
    """The smallest multiple of the patch at least ``size``: 320 stays 320 for patches 16 and 8,
    and becomes 322 (23 patches) for patch 14."""
    return math.ceil(size / patch_size) * patch_size


def whole_image_probabilities(model, images, flip, precision, batch_size, align_corners=False):
    """One forward per image at its (resized) size; logits upsampled bilinearly to that size.

    A size that is no multiple of the patch (320 for DINOv2's 14) is resized bilinearly to the
    next multiple for the forward only; the logits still come back to the scoring grid.
    """
    patch_size = getattr(model, "patch_size", 1)
    size = tuple(forward_size(side, patch_size) for side in images.shape[-2:])
    inputs = (
        images if size == images.shape[-2:] else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    )
    logits = flip_averaged_logits(model, inputs, flip, precision, batch_size)  # (B, K, h, w)
    upsampled = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=align_corners)
    return softmax_per_head(upsampled, head_widths(model))  # (B, K, H, W)


def predict_head_probabilities(model, images, protocol, precision="fp32", batch_size=32):
    """Probabilities of every head at each image's size: list of (heads * K, H, W)."""
    if protocol.window:
        return sliding_probabilities_many(
            model, images, protocol.window, protocol.overlap, protocol.flip, precision, batch_size
        )
    return list(
        whole_image_probabilities(
            model, torch.stack(images), protocol.flip, precision, batch_size, protocol.align_corners
        )
    )


def predict_head_clusters(model, images, protocol, precision="fp32", batch_size=32):
    """Class maps of every head for a list of normalised images (3, H, W): list of (heads, H, W)."""
    if protocol.window:  # band by band: never the full-resolution K-channel probabilities
        return sliding_class_maps(
            model, images, protocol.window, protocol.overlap, protocol.flip, precision, batch_size
        )
    probs = predict_head_probabilities(model, images, protocol, precision, batch_size)
    return [argmax_per_head(prob, head_widths(model)) for prob in probs]


def resize_nearest(mask, size):
    """torch's legacy 'nearest' (not 'nearest-exact', not PIL), as the original scores at 320x320."""
    return F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()


def resize_nearest_heads(maps, size):
    """:func:`resize_nearest` of every head's map (heads, H, W) at once."""
    return F.interpolate(maps[None].float(), size=tuple(size), mode="nearest")[0].long()


def score_image(pred, label, score_size, num_classes, num_clusters=None):
    if score_size is not None:
        pred, label = resize_nearest(pred, score_size), resize_nearest(label, score_size)
    return confusion_matrix(pred.cpu(), label.cpu(), num_classes, num_clusters)


def default_loader_workers(device):
    """Evaluation's loader processes: 2 on CUDA, none on CPU, where they would take the cores from the
    forwards' threads (reading an image costs ~3% of its forwards there, while workers slowed the bf16
    forwards by 20%: benchmarks/bench_eval.py)."""
    return 0 if torch.device(device).type == "cpu" else 2


def eval_loader(dataset, batch_size, num_workers):
    """Images of this process's shard (rank::world, no padding: no image counted twice)."""
    indices = list(range(distributed.rank(), len(dataset), distributed.world_size()))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=list,
        worker_init_fn=quiet_hangups,  # Ctrl-C: the one error line, no traceback from a worker
    )


@dataclass
class EvalResult:
    confusion: np.ndarray
    metrics: dict
    num_images: int
    seconds: float
    protocol: Protocol

    def as_dict(self, class_names):
        """The results JSON; with more clusters than classes, the many-to-one match's figures are
        the ``*_many_to_one`` fields beside the one-to-one ones."""
        cluster_to_class = self.metrics["cluster_to_class"]
        many_to_one = self.metrics.get("many_to_one")
        extra = {}
        if many_to_one is not None:
            extra = {
                "acc_many_to_one": float(many_to_one["acc"]),
                "miou_many_to_one": float(many_to_one["miou"]),
                "assignment_many_to_one": {str(k): int(c) for k, c in enumerate(many_to_one["cluster_to_class"])},
            }
        return {
            "acc": float(self.metrics["acc"]),
            "miou": float(self.metrics["miou"]),
            "mean_class_acc": float(self.metrics["mean_class_acc"]),
            "per_class_iou": {name: _finite(v) for name, v in zip(class_names, self.metrics["iou"])},
            "per_class_acc": {name: _finite(v) for name, v in zip(class_names, self.metrics["class_acc"])},
            "confusion": self.confusion.astype(int).tolist(),
            "assignment": {str(k): int(c) for k, c in enumerate(cluster_to_class)},
            "protocol": self.protocol.name,
            "protocol_settings": asdict(self.protocol),
            "num_images": self.num_images,
            "seconds": self.seconds,
            **extra,
        }


def _finite(value):
    return None if not np.isfinite(value) else float(value)


def evaluate(model, data_root, protocol, **kwargs):
    """Confusion matrix over the split (summed across processes) and the matched metrics.

    Keyword arguments as :func:`evaluate_heads`; a model with several heads is scored on its first.
    """
    return evaluate_heads(model, data_root, protocol, **kwargs)[0]


def evaluate_heads(
    model,
    data_root,
    protocol,
    *,
    device="cpu",
    precision="fp32",
    batch_size=32,
    num_workers=None,
    limit=None,
    split="val",
    progress=True,
    on_image=None,
    crf_workers=None,
    dataset=DEFAULT_DATASET,
    on_image_heads=None,
):
    """One EvalResult per head of ``model``, all from the same backbone forwards.

    ``on_image(sample, pred)`` is called for every image with the first head's map (e.g. to save
    pictures), ``on_image_heads(sample, preds)`` with every head's maps (heads, H, W). With
    ``protocol.crf`` the CRFs run in ``crf_workers`` processes (default: the CPU cores, at most 8;
    0: in this process) while the next images go through the backbone. ``dataset`` is a name or
    spec of data/registry.py; a head may have any number of clusters K (its confusion is C x K).
    ``num_workers`` None: :func:`default_loader_workers`.
    """
    spec = get_dataset(dataset, data_root)
    if num_workers is None:
        num_workers = default_loader_workers(device)
    num_classes = spec.num_classes
    widths = head_widths(model)
    dataset = SegmentationEval(spec, data_root, protocol.transform(), split=split, limit=limit)
    # Sliding evaluation batches the windows of several images (about 24 with flips for 640x480),
    # so a few images a step fill a forward; single-forward protocols batch whole images.
    images_per_step = max(1, batch_size // 24) if protocol.window else batch_size
    loader = eval_loader(dataset, images_per_step, num_workers)
    was_training = model.training
    model.eval()
    confusions = [torch.zeros((num_classes, width), dtype=torch.int64) for width in widths]  # (C, K) each
    start = time.perf_counter()
    bar = tqdm(
        total=len(loader.dataset),
        desc=f"eval {protocol.name}",
        unit="img",
        disable=not (progress and distributed.is_main()),
    )

    def record(sample, pred):  # pred (heads, H, W)
        if protocol.score_size is None and tuple(pred.shape[-2:]) != tuple(sample["label"].shape):
            pred = resize_nearest_heads(pred, sample["label"].shape)  # (heads, H_label, W_label)
        for head, width in enumerate(widths):
            confusions[head] += score_image(pred[head], sample["label"], protocol.score_size, num_classes, width)
        if on_image is not None:
            on_image(sample, pred[0].cpu())
        if on_image_heads is not None:
            on_image_heads(sample, pred)
        bar.update(1)

    with torch.no_grad(), contextlib.ExitStack() as stack:
        crf = stack.enter_context(CRFPool(crf_workers, widths)) if protocol.crf else None
        with sigint_held():  # Ctrl-C while the workers are forked would be lost
            batches = iter(loader)
        for samples in batches:
            images = [sample["image"].to(device, non_blocking=True) for sample in samples]
            if crf is None:
                for sample, pred in zip(samples, predict_head_clusters(model, images, protocol, precision, batch_size)):
                    record(sample, pred)
                continue
            probs = predict_head_probabilities(model, images, protocol, precision, batch_size)  # each (heads * K, H, W)
            for sample, image, prob in zip(samples, images, probs):
                crf.submit(image, prob, sample)
            for sample, pred in crf.finished():
                record(sample, pred)
        if crf is not None:
            for sample, pred in crf.finished(wait_all=True):
                record(sample, pred)
    bar.close()
    model.train(was_training)
    # One all-reduce of every head's counts, flattened side by side.
    summed = distributed.all_reduce_sum(torch.cat([c.flatten() for c in confusions]).to(device)).cpu()
    parts = summed.split([confusion.numel() for confusion in confusions])
    confusions = [part.view(num_classes, width).numpy() for part, width in zip(parts, widths)]
    num_images = int(distributed.all_reduce_sum(torch.tensor(len(loader.dataset), device=device)).item())
    seconds = time.perf_counter() - start
    return [
        EvalResult(confusion, clustering_metrics(confusion), num_images, seconds, protocol) for confusion in confusions
    ]
