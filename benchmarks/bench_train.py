"""Training speed: images/s, one step against its two backbone forwards (the floor for a frozen
backbone), and the training-pair loader's rate per process and with the configs' workers.

    python benchmarks/bench_train.py [--batch-size 16] [--steps 4] [--repeats 3] [--device cpu] [--precision fp32]
    python benchmarks/bench_train.py --patch-size 8 --device cuda --precision bf16 --batch-size 64

Uses synthetic 640x480 scenes and a randomly initialised full-size ViT-S (speed does not depend on
the weights). The loader is compared with the whole-image pipeline it replaced
(benchmarks/baselines.py: flip, resize and normalise the whole image, then crop) in the same
process, one thread, on the same images.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import torch

from benchmarks.baselines import whole_image_pair
from benchmarks.common import check_counts, random_model, synthetic_dataset, timed
from data.pairs import TrainingPairs
from data.registry import get_dataset
from data.transforms import normalize_uint8
from engine.training import TrainableHead, negative_shifts, probe_loss, train_loader
from modules.loss import IDDCLoss
from modules.model import LinearProbe
from utils.cli import ArgumentParser, entry_point, resolve_device
from utils.precision import autocast_context

CONFIG_WORKERS = 8  # configs/train_cocostuff27_*.yaml


def one_step(model, head, probe, batch, loss_fn, optimizers, device, precision, step):
    """What train_one_epoch does for a batch, without the loader."""
    images = normalize_uint8(batch["image"].to(device))  # (B, 3, 224, 224)
    images_aug = normalize_uint8(batch["image_aug"].to(device))  # (B, 3, 224, 224)
    labels = batch["label"].to(device).long()  # (B, 224, 224)
    size = images.shape[0]
    with autocast_context(device, precision):
        with torch.no_grad():
            features = model.vit(torch.cat((images, images_aug)))  # (2B, C, h, w)
        codes_inter, logits = head(features)
        probe_logits = probe(codes_inter[:size])
    probe_logits = torch.nn.functional.interpolate(
        probe_logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True
    )
    _, probe_objective = probe_loss(probe_logits, labels)
    feats, feats_aug = features.float().split(size)
    view0, view1 = logits.split(size)
    out = loss_fn(feats, feats_aug, view0, view1, neg_shifts=negative_shifts(0, step, size))
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    (out["objective"] + probe_objective).backward()
    for optimizer in optimizers:
        optimizer.step()


def bare_forwards(model, batch, device, precision):
    images = normalize_uint8(batch["image"].to(device))
    images_aug = normalize_uint8(batch["image_aug"].to(device))
    with autocast_context(device, precision), torch.no_grad():
        model.vit(torch.cat((images, images_aug)))


def loader_rate(loader, epoch, batches):
    """Samples/s the loader delivers (decode, flip, resize, crop, collate; workers included)."""
    loader.batch_sampler.set_epoch(epoch)
    start = time.perf_counter()
    seen = 0
    for index, batch in enumerate(loader):
        seen += batch["image"].shape[0]
        if index + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def pairs_per_second(root, ids, items, epoch):
    """(ours, whole-image pipeline) items/s in this process, one thread, interleaved so both see the same load."""
    dataset = TrainingPairs(get_dataset("cocostuff27"), root, "train", seed=0)
    ours = timed(lambda: [dataset[(epoch, i)] for i in range(items)], "cpu")
    whole = timed(
        lambda: [whole_image_pair(dataset.spec, root, "train", ids[i], 0, epoch, i) for i in range(items)], "cpu"
    )
    return items / ours, items / whole


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=4, help="timed steps a repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs a measurement")
    parser.add_argument("--patch-size", type=int, default=16, choices=(16, 8), help="the random ViT-S's patch")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--precision", default=None, choices=("fp32", "bf16"), help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--loader-items", type=int, default=48, help="items a repeat of the per-process loader comparison"
    )
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(resolve_device(args.device))
    check_counts(args, {"--batch-size": 2, "--steps": 1, "--repeats": 1, "--loader-items": 1})
    batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    num_images = max(batch_size * args.steps, args.loader_items)
    with synthetic_dataset("cocostuff27", "train", num_images, ((640, 480), (480, 640), (500, 375))) as (root, ids):
        measure(args, device, batch_size, precision, root, ids)
    return 0


def measure(args, device, batch_size, precision, root, ids):
    model = random_model(args.patch_size, device)
    head, probe = TrainableHead(model).train(), LinearProbe().to(device).train()
    optimizers = (torch.optim.Adam(head.parameters(), lr=5e-4), torch.optim.Adam(probe.parameters(), lr=1e-3))
    loss_fn = IDDCLoss()
    batches = list(train_loader(root, batch_size, 0, 0, device))[: args.steps]

    step_times, forward_times = [], []
    for repeat in range(args.repeats + 1):  # the first repeat warms up
        step_s = (
            timed(
                lambda: [
                    one_step(model, head, probe, b, loss_fn, optimizers, device, precision, i)
                    for i, b in enumerate(batches)
                ],
                device,
            )
            / args.steps
        )
        forward_s = timed(lambda: [bare_forwards(model, b, device, precision) for b in batches], device) / args.steps
        if repeat:
            step_times.append(step_s)
            forward_times.append(forward_s)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pair_rates = [pairs_per_second(root, ids, args.loader_items, epoch) for epoch in range(args.repeats + 1)][1:]
    torch.set_num_threads(threads)
    worker_loader = train_loader(root, batch_size, 0, CONFIG_WORKERS, device)
    loader_batches = max(1, args.loader_items // batch_size)
    workers_rates = [loader_rate(worker_loader, epoch, loader_batches) for epoch in range(args.repeats + 1)][1:]

    step_s, forward_s = statistics.median(step_times), statistics.median(forward_times)
    ratios = [s / f for s, f in zip(step_times, forward_times)]
    ours = statistics.median(r[0] for r in pair_rates)
    pair_ratios = [r[0] / r[1] for r in pair_rates]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)"
    print(
        f"{name}, ViT-S/{args.patch_size}, {precision}, batch {batch_size}, {args.steps} steps a repeat, "
        f"median of {args.repeats}"
    )
    print(f"training step (loader excluded): {step_s:.3f} s  ({batch_size / step_s:.1f} images/s)")
    print(
        f"its two backbone forwards alone: {forward_s:.3f} s  -> step / forwards = "
        f"{statistics.median(ratios):.2f}x (goal <= 1.2x)"
    )
    print(
        f"training pairs, one process, 1 thread: {ours:.1f} items/s = {statistics.median(pair_ratios):.2f}x the "
        f"whole-image pipeline ({statistics.median(r[1] for r in pair_rates):.1f} items/s)"
    )
    print(
        f"loader with {CONFIG_WORKERS} workers (the configs'): {statistics.median(workers_rates):.1f} samples/s "
        f"vs the step's {batch_size / step_s:.1f} images/s"
    )
    print(
        "repeats (step s, forwards s, pairs ratio, workers samples/s):",
        [
            (round(a, 3), round(b, 3), round(c, 2), round(d, 1))
            for a, b, c, d in zip(step_times, forward_times, pair_ratios, workers_rates)
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
