"""The speed measurements of scripts/gpu_check.py, on synthetic data and randomly initialised ViTs.

Speed does not depend on the weights, so full-size ViT-S/16 and S/8 backbones are built with random
weights (``--quick``: one block, 64 channels). Every time is taken between
``torch.cuda.synchronize`` calls, after warm-up steps, so that it is the GPU's time and not the time
to queue its work. Each function returns plain numbers for the report.

The training step below is the one of ``engine.training.train_one_epoch`` (backbone forward of both
views without gradients, head, linear probe, IDDC loss in float32, backward, both optimiser steps,
the logged values read back), written out here so that it runs on batches already on the GPU and
can be timed without the loader.
"""

import contextlib
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data.cocostuff import SPLIT_LIST_NAME, split_folder
from data.synthetic import write_synthetic_cocostuff
from data.transforms import normalize_uint8
from engine.evaluation import evaluate, make_protocol, window_boxes
from engine.training import TrainableHead, negative_shifts, probe_loss, train_loader, upsample_probe_logits
from modules.loss import IDDCLoss
from modules.model import IDDCModel, LinearProbe
from modules.vit import VisionTransformer
from utils.precision import autocast_context, inference_context

BACKBONES = {"S/16": 16, "S/8": 8}  # name in the report -> patch size of the ViT-S
MIB = 2**20


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the goals' settings, or --quick's small ones."""

    depth: int  # ViT blocks (12: the real ViT-S)
    width: int  # ViT channels, 64 per attention head (384: the real ViT-S); the head has as many
    batch_size: int  # training batch
    warmup_steps: int
    timed_steps: int
    loader_workers: tuple
    loader_batch_size: int
    loader_unique_images: int  # distinct JPEGs written; the split repeats them (hard links)
    loader_items: int
    eval_images: int
    eval_image_size: tuple  # (width, height)
    eval_batch_size: int  # eval.py's default
    sweep_variants: int


FULL = Sizes(
    depth=12,
    width=384,
    batch_size=64,
    warmup_steps=3,
    timed_steps=10,
    loader_workers=(8, 16),
    loader_batch_size=64,
    loader_unique_images=64,
    loader_items=1536,
    eval_images=32,
    eval_image_size=(640, 480),
    eval_batch_size=32,
    sweep_variants=4,
)
QUICK = Sizes(
    depth=1,
    width=64,
    batch_size=2,
    warmup_steps=1,
    timed_steps=1,
    loader_workers=(1, 2),
    loader_batch_size=2,
    loader_unique_images=4,
    loader_items=8,
    eval_images=1,
    eval_image_size=(288, 224),  # two sliding windows
    eval_batch_size=32,
    sweep_variants=2,
)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device, into):
    """``into["peak_mib"]``: the most GPU memory allocated during the block above what it started
    with (None on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        into["peak_mib"] = None
        yield
        return
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    torch.cuda.synchronize(device)
    into["peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / MIB


def timed(fn, device, repeats):
    """Seconds per call of ``fn`` over ``repeats`` calls, synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    for index in range(repeats):
        fn(index)
    sync(device)
    return (time.perf_counter() - start) / repeats


def release(device):
    """Give the cached GPU memory of the previous measurement back, so that each starts afresh."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- data


def write_training_data(root, sizes):
    """Synthetic COCO-Stuff training images, 640x480 like COCO's: ``loader_unique_images`` scenes,
    listed again (hard links) up to ``loader_items`` so that decoding costs what real images do."""
    ids = write_synthetic_cocostuff(
        root, num_train=sizes.loader_unique_images, num_val=0, sizes=((640, 480), (480, 640), (500, 375))
    )["train"]
    folder = split_folder("train")
    listed = list(ids)
    for number in range(len(ids), sizes.loader_items):
        source, name = ids[number % len(ids)], f"{900000000000 + number:012d}"
        for kind, suffix in (("images", ".jpg"), ("annotations", ".png")):
            _link(root / kind / folder / f"{source}{suffix}", root / kind / folder / f"{name}{suffix}")
        listed.append(name)
    (root / "curated" / folder / SPLIT_LIST_NAME).write_text("".join(f"{i}\n" for i in listed))
    return root


def _link(source, target):
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def write_eval_data(root, sizes):
    write_synthetic_cocostuff(root, num_train=0, num_val=sizes.eval_images, sizes=(sizes.eval_image_size,), seed=1)
    return root


def resident_batch(train_root, batch_size, device):
    """One real training batch (the loader's uint8 crops and labels), moved to the device once."""
    loader = train_loader(train_root, batch_size, 0, 0, "cpu")
    batch = next(iter(loader))
    return {name: batch[name].to(device) for name in ("image", "image_aug", "label")}


# ---------------------------------------------------------------- training


def random_model(patch_size, sizes, device):
    """An IDDC model on a randomly initialised ViT of ``sizes``' depth and width."""
    vit = VisionTransformer(
        patch_size=patch_size, embed_dim=sizes.width, depth=sizes.depth, num_heads=sizes.width // 64
    )
    return IDDCModel(vit).to(device).eval()


class Trainer:
    """A randomly initialised model with the head, probe, loss and optimisers of a training run;
    with ``variants`` > 1, as many independent heads on the one frozen backbone (a sweep)."""

    def __init__(self, patch_size, sizes, device, variants=1):
        self.model = random_model(patch_size, sizes, device)
        self.device = device
        self.runs = []
        for index in range(variants):
            heads = self.model if index == 0 else _other_head(self.model)
            head = TrainableHead(heads)
            probe = LinearProbe(self.model.vit.embed_dim, self.model.num_classes).to(device)
            optimizers = (torch.optim.Adam(head.parameters(), lr=5e-4), torch.optim.Adam(probe.parameters(), lr=1e-3))
            self.runs.append((head, probe, IDDCLoss(), optimizers))

    def backbone(self, batch, precision):
        """Features (2B, C, h, w) of both views, without gradients: the bare two-view forward."""
        images = normalize_uint8(batch["image"])  # (B, 3, 224, 224)
        images_aug = normalize_uint8(batch["image_aug"])  # (B, 3, 224, 224)
        with autocast_context(self.device, precision), torch.no_grad():
            return self.model.vit(torch.cat((images, images_aug)))  # (2B, C, h, w)

    def head_step(self, run, features, labels, precision, step):
        """Head, probe and loss of one run on the shared features, backward and optimiser steps."""
        head, probe, loss_fn, optimizers = run
        batch = labels.shape[0]
        with autocast_context(self.device, precision):
            codes_inter, logits = head(features)  # (2B, C, h, w), (2B, K, h, w)
            probe_logits = probe(codes_inter[:batch])  # (B, K, h, w)
        probe_logits = upsample_probe_logits(probe_logits.float(), labels.shape[-2:])  # (B, K, H, W)
        probe_value, probe_objective = probe_loss(probe_logits, labels)
        feats, feats_aug = features.float().split(batch)
        view0, view1 = logits.split(batch)
        out = loss_fn(feats, feats_aug, view0, view1, neg_shifts=negative_shifts(0, step, batch), across_processes=True)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        (out["objective"] + probe_objective).backward()
        for optimizer in optimizers:
            optimizer.step()
        # Training reads its logged values back every step (a synchronisation): so does the timing.
        return [out[name].item() for name in ("total", "pos", "neg", "balance", "entropy")] + [probe_value.item()]

    def step(self, batch, precision, step, variants=None):
        """One training step of the first ``variants`` runs (default all), the backbone forward shared;
        with one run, the step of train_one_epoch."""
        features = self.backbone(batch, precision)
        labels = batch["label"].long()  # (B, 224, 224)
        return [self.head_step(run, features, labels, precision, step) for run in self.runs[:variants]]


def _other_head(model):
    """A second projection head and classifier like ``model``'s (the same weights), on its backbone."""
    other = IDDCModel(model.vit, num_classes=model.num_classes).to(next(model.head_nonlinear.parameters()).device)
    other.head_nonlinear.load_state_dict(model.head_nonlinear.state_dict())
    other.classifier.load_state_dict(model.classifier.state_dict())
    return other


def measure_training(patch_size, precision, sizes, train_root, device):
    """Training step against the bare two-view backbone forwards, on one GPU-resident batch."""
    release(device)
    trainer = Trainer(patch_size, sizes, device)
    batch = resident_batch(train_root, sizes.batch_size, device)
    figures = {}
    timed(lambda i: trainer.step(batch, precision, i), device, sizes.warmup_steps)
    with peak_memory(device, figures):
        step_s = timed(lambda i: trainer.step(batch, precision, i), device, sizes.timed_steps)
    timed(lambda i: trainer.backbone(batch, precision), device, sizes.warmup_steps)
    forward_s = timed(lambda i: trainer.backbone(batch, precision), device, sizes.timed_steps)
    return {
        "step_s": step_s,
        "images_per_s": sizes.batch_size / step_s,
        "forwards_images_per_s": sizes.batch_size / forward_s,
        "share_of_bare": forward_s / step_s,  # step throughput / bare forward throughput
        "peak_mib": figures["peak_mib"],
    }


def measure_sweep(patch_size, precision, sizes, train_root, device):
    """One step of ``sweep_variants`` heads on one backbone pass, against as many separate steps."""
    release(device)
    trainer = Trainer(patch_size, sizes, device, variants=sizes.sweep_variants)
    batch = resident_batch(train_root, sizes.batch_size, device)
    timed(lambda i: trainer.step(batch, precision, i), device, sizes.warmup_steps)
    shared_s = timed(lambda i: trainer.step(batch, precision, i), device, sizes.timed_steps)
    single_s = timed(lambda i: trainer.step(batch, precision, i, variants=1), device, sizes.timed_steps)
    return {
        "variants": sizes.sweep_variants,
        "shared_s": shared_s,
        "separate_s": sizes.sweep_variants * single_s,
        "gain": sizes.sweep_variants * single_s / shared_s,
    }


# ---------------------------------------------------------------- loader


def measure_loader(train_root, workers, sizes, device, epochs=2):
    """Samples/s of the training loader with ``workers`` processes (decoding, augmentation, collation,
    pinned memory on CUDA): the first epoch warms the persistent workers up, the next are timed."""
    loader = train_loader(train_root, sizes.loader_batch_size, 0, workers, device)
    rates = []
    try:
        for epoch in range(epochs + 1):
            loader.batch_sampler.set_epoch(epoch)
            start, seen = time.perf_counter(), 0
            for batch in loader:
                seen += batch["image"].shape[0]
            if epoch:
                rates.append(seen / (time.perf_counter() - start))
    finally:
        del loader
    return statistics.median(rates)


# ---------------------------------------------------------------- sliding evaluation


def measure_sliding_eval(patch_size, precision, sizes, eval_root, device):
    """evaluate() with the published sliding protocol and eval.py's defaults (batch 32, its loader
    workers), against the bare backbone forwards of the same windows and flips in the same batches."""
    release(device)
    model = random_model(patch_size, sizes, device)
    protocol = make_protocol("sliding")
    common = dict(device=device, precision=precision, batch_size=sizes.eval_batch_size, progress=False)
    evaluate(model, eval_root, protocol, limit=1, **common)  # warm-up
    figures = {}
    sync(device)
    start = time.perf_counter()
    with peak_memory(device, figures):
        result = evaluate(model, eval_root, protocol, **common)
    sync(device)
    eval_s = time.perf_counter() - start
    width, height = sizes.eval_image_size
    windows = len(window_boxes(height, width, protocol.window, protocol.overlap))
    # evaluate() puts the windows of max(1, batch // 24) images (and their flips) in a step and cuts
    # the step's crops into forwards of at most batch_size.
    images_per_step = max(1, sizes.eval_batch_size // 24)
    crops = torch.randn(2 * windows * images_per_step, 3, protocol.window, protocol.window, device=device)
    steps = -(-result.num_images // images_per_step)

    def forwards(_):
        with torch.no_grad(), inference_context(device, precision):
            for chunk in crops.split(sizes.eval_batch_size):
                model.vit(chunk)

    forwards(0)
    forwards_s = timed(forwards, device, steps) * steps
    return {
        "images": result.num_images,
        "windows": windows,
        "images_per_s": result.num_images / eval_s,
        "forwards_images_per_s": result.num_images / forwards_s,
        "ratio": eval_s / forwards_s,
        "peak_mib": figures["peak_mib"],
    }


def write_data(work_dir, sizes):
    """Both synthetic sets under ``work_dir``: (training root, evaluation root)."""
    work_dir = Path(work_dir)
    return write_training_data(work_dir / "train", sizes), write_eval_data(work_dir / "eval", sizes)
