"""The pieces of IDDC training: loaders, optimisers, the poly schedule, one epoch, resume state."""
import random
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.pairs import TrainingPairs
from data.registry import DEFAULT_DATASET, get_dataset
from utils import distributed
from utils.evaluation import autocast_context


class TrainableHead(nn.Module):
    """Projection head + classifier as one module, so DDP sees exactly the trained parameters."""

    def __init__(self, model):
        super().__init__()
        self.head_nonlinear = model.head_nonlinear
        self.classifier = model.classifier

    def forward(self, features):
        codes_inter = self.head_nonlinear(features)  # (B, C, h, w)
        return codes_inter, self.classifier(codes_inter)  # (B, K, h, w)


class ClustersAndProbe(nn.Module):
    """The model with the linear probe as a second head, so one evaluation pass scores both."""

    num_heads = 2

    def __init__(self, model, probe):
        super().__init__()
        self.model = model
        self.probe = probe
        self.num_classes = model.num_classes

    def forward(self, images):
        features, codes_inter, logits = self.model(images)
        return features, codes_inter, torch.cat((logits, self.probe(codes_inter)), dim=1)  # (B, 2K, h, w)


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
    """Shuffled, drop_last loader of this process's share; ``batch_size`` is the global batch.

    ``dataset`` is a name or spec of data/registry.py; its training items (e.g. five crops of each
    Cityscapes image) make up an epoch.
    """
    world = distributed.world_size()
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} must be divisible by the number of processes ({world})")
    local_batch = batch_size // world
    if local_batch < 2:
        raise ValueError(f"--batch-size {batch_size} gives {local_batch} image(s) a process; IDDC's negatives need at least 2")
    dataset = TrainingPairs(get_dataset(dataset), data_root, "train", seed=seed, limit=limit)
    if len(dataset) < batch_size:
        raise ValueError(f"the training split has {len(dataset)} images, fewer than --batch-size {batch_size} (batches are drop_last)")
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=seed, drop_last=True
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=local_batch,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def negative_shifts(seed, step, batch, count=3):
    """The loss's negative shifts drawn from (seed, step): reproducible across resumes and ranks.

    Uniform over 1..B-2 as the original's ``randint(1, B-1)``; B = 2 can only use shift 1.
    """
    if batch == 2:
        return [1] * count
    return np.random.default_rng([seed, step, 7]).integers(1, batch - 1, size=count).tolist()


def train_one_epoch(model, head, probe, loader, loss_fn, optimizer, probe_optimizer, *, epoch, step, seed, device,
                    precision, log_every, logger, jsonl):
    """One pass over the loader; returns (next global step, mean of each logged value over the epoch)."""
    head.train()
    probe.train()
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    epoch_sums, window_sums = defaultdict(float), defaultdict(float)
    window_count = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not distributed.is_main())
    for batch in bar:
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, 224, 224)
        images_aug = batch["image_aug"].to(device, non_blocking=True)  # (B, 3, 224, 224)
        labels = batch["label"].to(device, non_blocking=True)  # (B, 224, 224)
        batch_size = images.shape[0]
        with autocast_context(device, precision):
            with torch.no_grad():
                features = model.vit(torch.cat((images, images_aug)))  # (2B, C, h, w)
            codes_inter, logits = head(features)  # (2B, C, h, w), (2B, K, h, w)
            probe_logits = probe(codes_inter[:batch_size])  # (B, K, h, w)
        probe_logits = F.interpolate(probe_logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
        probe_loss = F.cross_entropy(probe_logits, labels, ignore_index=255)
        feats, feats_aug = features.float().split(batch_size)
        view0, view1 = logits.split(batch_size)
        out = loss_fn(feats, feats_aug, view0, view1, neg_shifts=negative_shifts(seed, step, batch_size, loss_fn.num_negatives))
        if not torch.isfinite(out["total"]):
            raise FloatingPointError(f"non-finite IDDC loss at epoch {epoch} step {step}: {[(k, float(v)) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1]}")
        optimizer.zero_grad(set_to_none=True)
        probe_optimizer.zero_grad(set_to_none=True)
        (out["total"] + probe_loss).backward()  # the probe sees detached features: the two do not mix
        optimizer.step()
        probe_optimizer.step()
        step += 1

        values = {name: out[name].item() for name in ("total", "pos", "neg", "balance", "entropy")}
        values["probe"] = probe_loss.item()
        for name, value in values.items():
            epoch_sums[name] += value
            window_sums[name] += value
        window_count += 1
        if step % log_every == 0 or window_count == len(loader):
            means = {name: value / window_count for name, value in window_sums.items()}
            lr = optimizer.param_groups[0]["lr"]
            rate = window_count * batch_size * distributed.world_size() / (time.perf_counter() - start)
            logger.info("epoch %d step %d lr %.2e | " + " ".join(f"{k} {v:.4f}" for k, v in means.items()) + " | %.1f img/s",
                        epoch, step, lr, rate)
            jsonl.write(kind="train", epoch=epoch, step=step, lr=lr, images_per_s=rate, **means)
            bar.set_postfix(loss=f"{means['total']:.4f}")
            window_sums.clear()
            window_count = 0
            start = time.perf_counter()
    bar.close()
    return step, {name: value / len(loader) for name, value in epoch_sums.items()}


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
