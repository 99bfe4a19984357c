"""The pieces of IDDC training: loaders, optimisers, the poly schedule, one epoch, resume state."""

import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.pairs import TrainingPairs
from data.registry import DEFAULT_DATASET, get_dataset
from data.sampler import GlobalBatchSampler
from data.transforms import normalize_uint8
from utils import distributed
from utils.constants import IGNORE_INDEX
from utils.errors import EXIT_INTERRUPTED, EXIT_PROBLEMS, EXIT_TERMINATED, StoppedError
from utils.precision import autocast_context


class TrainableHead(nn.Module):
    """The model's projection head and classifier as one module of their own, so that the optimiser,
    the parameter broadcast and the gradient all-reduce see exactly the trained parameters (the
    frozen backbone stays out). Its forward is the model's own ``head``, on the same modules."""

    def __init__(self, model):
        super().__init__()
        self.head_nonlinear = model.head_nonlinear
        self.classifier = model.classifier
        self._model_head = model.head  # a bound method, not a module: the backbone is not registered here

    def forward(self, features):
        return self._model_head(features)  # (B, C, h, w) codes, (B, K, h, w) cluster logits


class ClustersAndProbe(nn.Module):
    """The model with the linear probe as a second head, so one evaluation pass scores both: K
    cluster channels, then the probe's C class channels."""

    def __init__(self, model, probe):
        super().__init__()
        self.model = model
        self.probe = probe
        self.head_widths = [model.num_classes, probe.linear_head.out_channels]
        self.num_classes = max(self.head_widths)
        self.patch_size = model.patch_size

    def forward(self, images):
        features, codes_inter, logits = self.model(images)
        return features, codes_inter, torch.cat((logits, self.probe(codes_inter)), dim=1)  # (B, K + C, h, w)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def poly_lr(base_lr, epoch, epochs, power=0.9):
    """lr * (1 - epoch / epochs) ** power, stepped once an epoch, as the original's LambdaLR."""
    return base_lr * (1 - epoch / epochs) ** power


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_loader(data_root, batch_size, seed, num_workers, device, limit=None, dataset=DEFAULT_DATASET):
    """Loader of this process's contiguous share of every global batch; ``batch_size`` is global.

    The batch sampler runs in the main process and yields ``(epoch, index)`` keys, so the loader
    workers (persistent across epochs) draw each epoch's own augmentations; see
    ``data.sampler.GlobalBatchSampler`` for the order and the split between processes. ``dataset``
    is a name or spec of data/registry.py; its training items (e.g. five crops of each Cityscapes
    image) make up an epoch.
    """
    if batch_size < 2:
        raise ValueError(f"--batch-size {batch_size}: IDDC's negatives need a global batch of at least 2 images")
    dataset = TrainingPairs(get_dataset(dataset, data_root), data_root, "train", seed=seed, limit=limit)
    sampler = GlobalBatchSampler(
        len(dataset), batch_size, seed=seed, rank=distributed.rank(), world_size=distributed.world_size()
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
    )


def negative_shifts(seed, step, batch, count=3):
    """The loss's negative shifts drawn from (seed, step): reproducible across resumes and ranks.

    Uniform over 1..B-2 as the original's ``randint(1, B-1)``; B = 2 can only use shift 1.
    """
    if batch == 2:
        return [1] * count
    return np.random.default_rng([seed, step, 7]).integers(1, batch - 1, size=count).tolist()


def bilinear_weights(out_size, in_size, device, dtype=torch.float32):
    """(out_size, in_size) matrix of 1-D bilinear interpolation with align_corners=True.

    Output position i samples input position s = i (in - 1) / (out - 1); its weights are the hat
    function max(0, 1 - |s - j|) over the input positions j, i.e. 1 - frac and frac on the two
    neighbours, as ``F.interpolate`` weighs them.
    """
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    source = torch.arange(out_size, device=device, dtype=torch.float64) * scale  # (out,)
    inputs = torch.arange(in_size, device=device, dtype=torch.float64)  # (in,)
    return (1 - (source[:, None] - inputs[None, :]).abs()).clamp(min=0).to(dtype)  # (out, in)


def upsample_probe_logits(logits, size):
    """Bilinear upsampling (align_corners=True, as the original) of (B, K, h, w) logits to ``size``.

    Under ``torch.use_deterministic_algorithms(True)`` it is two matmuls: the same values up to
    float rounding, but interpolate's CUDA backward adds with atomics and raises in that mode.
    Otherwise ``F.interpolate`` itself, so that every run outside that mode stays bit for bit the
    original's.
    """
    if not torch.are_deterministic_algorithms_enabled():
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    rows = bilinear_weights(size[0], logits.shape[-2], logits.device, logits.dtype)  # (H, h)
    cols = bilinear_weights(size[1], logits.shape[-1], logits.device, logits.dtype)  # (W, w)
    return rows @ logits @ cols.T  # (B, K, H, W)


def probe_loss(probe_logits, labels):
    """Cross-entropy of the linear probe, averaged over the labelled pixels of the global batch.

    Returns (value, objective): the global mean, and this process's sum over the global count,
    whose gradients summed over the processes are the global mean's. No labelled pixel gives 0.
    Under deterministic algorithms the cross-entropy is a log-softmax and a gather: the CUDA kernel
    of ``F.cross_entropy`` for (B, K, H, W) inputs sums with atomics and raises in that mode.
    """
    labelled = labels != IGNORE_INDEX  # (b, H, W)
    if torch.are_deterministic_algorithms_enabled():
        log_probs = F.log_softmax(probe_logits, dim=1)  # (b, K, H, W)
        picked = log_probs.gather(1, labels.masked_fill(~labelled, 0).unsqueeze(1)).squeeze(1)  # (b, H, W)
        pixel_sum = -torch.where(labelled, picked, torch.zeros_like(picked)).sum()
    else:
        pixel_sum = F.cross_entropy(probe_logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    local = torch.stack([pixel_sum.detach().double(), labelled.sum().double()])
    total_sum, count = distributed.all_reduce_sum(local).unbind()
    count = count.clamp(min=1)
    return (total_sum / count).float(), pixel_sum / count.float()


class StopTraining(Exception):
    """Raised between steps when SIGINT or SIGTERM asked training to stop."""


class StopRequests:
    """Turns SIGINT / SIGTERM into a request that training honours between two steps.

    The handler only records the signal; the loop then saves a resume file of the last finished
    step and raises :meth:`stopped`, whose one line says how to continue. Under torchrun every
    process gets the signal, but not necessarily before the same step, so ``requested()`` agrees
    across processes.
    """

    EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum, frame):
        self.signum = signum

    def requested(self, local=False):
        """Whether any process got a stop signal (only this one's flag with ``local``)."""
        flag = self.signum is not None
        if local or not distributed.is_initialized():
            return flag
        signums = distributed.all_reduce_max(torch.tensor([self.signum or 0]))
        if self.signum is None and int(signums[0]):
            self.signum = int(signums[0])
        return bool(int(signums[0]))

    def stopped(self, resume_path, epoch, batch, step):
        """The error that ends an interrupted run: one ``error:`` line on stderr saying how to
        continue, exit 130 (SIGINT) or 143 (SIGTERM), as every command reports a signal."""
        return StoppedError(
            f"stopped by {signal.Signals(self.signum).name} at epoch {epoch}, batch {batch} (step {step}); "
            f"{resume_path} holds this point: run the same command with --resume to continue exactly from it",
            self.EXIT_CODES.get(self.signum, EXIT_PROBLEMS),
        )


@dataclass(eq=False)
class HeadRun:
    """One trained head (projection head + classifier, and its linear probe) with its loss,
    optimisers and log: what a run trains on top of the frozen backbone. ``probe`` and
    ``probe_optimizer`` are None where the training pairs carry no label (the probe is off).

    A single run trains one; a sweep (engine/trainer.py, engine/sweep.py) trains several on the same backbone
    features. ``name`` prefixes its readable log lines ("" for a single run); ``epoch_sums``
    holds the sums of the epoch so far (an epoch resumed midway starts from the saved ones).
    """

    head: nn.Module
    probe: nn.Module  # or None
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer  # or None
    log: object
    name: str = ""
    epoch_sums: dict = field(default_factory=dict)


def train_one_epoch(
    backbone,
    runs,
    loader,
    *,
    epoch,
    step,
    seed,
    device,
    precision,
    log_every,
    logger,
    start_batch=0,
    after_step=None,
    damaged=None,
):
    """One pass over the loader's epoch from ``start_batch``; returns (next global step, each run's epoch means).

    ``damaged``, a set, receives the indices of the items this process's batches replaced (data/pairs.py).

    Every batch goes through the frozen ``backbone`` once; each of the ``runs`` (:class:`HeadRun`)
    then does, on those features, exactly the step it would do alone (head, probe, loss, backward,
    optimiser steps), one run after the other, so one run's graph and loss buffers are freed
    before the next run's are made. ``after_step(batches_done, step)`` runs after every step
    (periodic checkpoints, stop requests); the runs' ``epoch_sums`` are then those of the epoch so far.
    """
    for run in runs:
        run.head.train()
        if run.probe is not None:
            run.probe.train()
        run.epoch_sums = defaultdict(float, run.epoch_sums)
    sampler = loader.batch_sampler
    sampler.set_epoch(epoch, start_batch)
    batches_per_epoch = sampler.batches_per_epoch
    world = distributed.world_size()
    window_sums, window_count = [defaultdict(float) for _ in runs], 0
    start = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=not distributed.is_main(),
        initial=start_batch,
        total=batches_per_epoch,
    )
    batches_done = start_batch
    for batch in bar:
        if damaged is not None and "damaged" in batch:
            damaged.update(index for index in batch["damaged"].tolist() if index >= 0)
        images = normalize_uint8(batch["image"].to(device, non_blocking=True))  # (b, 3, 224, 224)
        images_aug = normalize_uint8(batch["image_aug"].to(device, non_blocking=True))  # (b, 3, 224, 224)
        labels = None  # the probe's only input, read where a run has a probe
        if any(run.probe is not None for run in runs):
            labels = batch["label"].to(device, non_blocking=True).long()  # (b, 224, 224)
        local_batch = images.shape[0]
        with autocast_context(device, precision), torch.no_grad():
            features = backbone(torch.cat((images, images_aug)))  # (2b, C, h, w)
        feats, feats_aug = features.float().split(local_batch)  # (b, C, h, w) each
        step_values = [
            head_step(run, features, feats, feats_aug, labels, seed, step, epoch, device, precision) for run in runs
        ]
        step += 1
        batches_done += 1

        for run, values, sums in zip(runs, step_values, window_sums):
            for name, value in values.items():
                run.epoch_sums[name] += value
                sums[name] += value
        window_count += 1
        if step % log_every == 0 or batches_done == batches_per_epoch:
            rate = window_count * local_batch * world / (time.perf_counter() - start)
            for index, (run, sums) in enumerate(zip(runs, window_sums)):
                means = {name: value / window_count for name, value in sums.items()}
                lr = run.optimizer.param_groups[0]["lr"]
                logger.info(
                    ("[%s] " % run.name if run.name else "")
                    + "epoch %d step %d lr %.2e | "
                    + " ".join(f"{k} {v:.4f}" for k, v in means.items() if not k.startswith("n_"))
                    + " | pairs +%.0f -%.0f | %.1f img/s",
                    epoch,
                    step,
                    lr,
                    means["n_pos"],
                    means["n_neg"],
                    rate,
                )
                run.log.write(kind="train", epoch=epoch, step=step, lr=lr, images_per_s=rate, **means)
                if index == 0:
                    bar.set_postfix(loss=f"{means['total']:.4f}")
                sums.clear()
            window_count = 0
            start = time.perf_counter()
        if after_step is not None:
            after_step(batches_done, step)
    bar.close()
    return step, [{name: value / batches_per_epoch for name, value in run.epoch_sums.items()} for run in runs]


def head_step(run, features, feats, feats_aug, labels, seed, step, epoch, device, precision):
    """One optimiser step of ``run`` on the backbone's ``features`` (2b, C, h, w) of both views
    (``feats``, ``feats_aug``: their float32 halves); returns the values it logs."""
    local_batch = feats.shape[0]
    with autocast_context(device, precision):
        codes_inter, logits = run.head(features)  # (2b, C, h, w), (2b, K, h, w)
        probe_logits = None if run.probe is None else run.probe(codes_inter[:local_batch])  # (b, classes, h, w)
    view0, view1 = logits.split(local_batch)
    shifts = negative_shifts(seed, step, local_batch * distributed.world_size(), run.loss_fn.num_negatives)
    out = run.loss_fn(feats, feats_aug, view0, view1, neg_shifts=shifts, across_processes=True)
    if not torch.isfinite(out["total"]):
        where = f" of {run.name}" if run.name else ""
        terms = [(k, float(v)) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1]
        raise FloatingPointError(f"non-finite IDDC loss{where} at epoch {epoch} step {step}: {terms}")
    optimizers = [run.optimizer] if run.probe is None else [run.optimizer, run.probe_optimizer]
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    objective = out["objective"]
    if probe_logits is not None:
        probe_logits = upsample_probe_logits(probe_logits.float(), labels.shape[-2:])  # (b, classes, H, W)
        probe_value, probe_objective = probe_loss(probe_logits, labels)
        objective = objective + probe_objective  # the probe sees detached features: the two do not mix
    objective.backward()
    trained = [module for module in (run.head, run.probe) if module is not None]
    distributed.all_reduce_gradients([p for module in trained for p in module.parameters()])
    for optimizer in optimizers:
        optimizer.step()
    values = {name: out[name].item() for name in ("total", "pos", "neg", "balance", "entropy")}
    if probe_logits is not None:
        values["probe"] = probe_value.item()
    values["n_pos"] = float(out["n_pos"])
    values["n_neg"] = float(out["n_neg"])
    return values


def rng_states():
    """Global RNG states as tensors and lists, so the resume file loads with weights_only=True."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states):
    version, mt_state, gauss = states["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
