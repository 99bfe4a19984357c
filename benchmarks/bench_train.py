"""Training speed: images/s, one step against its two backbone forwards (the floor for a frozen
backbone), and the training-pair loader's rate per process and with the configs' workers.

    python benchmarks/bench_train.py [--batch-size 16] [--steps 4] [--repeats 3] [--device cpu] [--precision fp32]
    python benchmarks/bench_train.py --patch-size 8 --device cuda --precision bf16 --batch-size 64

Uses synthetic 640x480 scenes and a randomly initialised full-size ViT-S (speed does not depend on
the weights). The loader is compared with the whole-image pipeline it replaced
(tests/reference_pairs.py: flip, resize and normalise the whole image, then crop) in the same
process, one thread, on the same images.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import sync  # noqa: E402
from data.pairs import CocoStuffPairs  # noqa: E402
from data.synthetic import write_synthetic_cocostuff  # noqa: E402
from data.transforms import normalize_uint8  # noqa: E402
from engine.training import TrainableHead, negative_shifts, probe_loss, train_loader  # noqa: E402
from modules.loss import IDDCLoss  # noqa: E402
from modules.model import IDDCModel, LinearProbe  # noqa: E402
from modules.vit import VisionTransformer  # noqa: E402
from tests.reference_pairs import reference_pair  # noqa: E402
from utils.cli import ArgumentParser
from utils.precision import autocast_context  # noqa: E402

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


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


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
    """(ours, reference) items/s in this process, one thread, interleaved so both see the same load."""
    dataset = CocoStuffPairs(root, "train", seed=0)
    ours = timed(lambda: [dataset[(epoch, i)] for i in range(items)], "cpu")
    reference = timed(lambda: [reference_pair(root, "train", ids[i], 0, epoch, i) for i in range(items)], "cpu")
    return items / ours, items / reference


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=4, help="timed steps a repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch-size", type=int, default=16, choices=(16, 8))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", default=None, choices=("fp32", "bf16"), help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--loader-items", type=int, default=48, help="items a repeat of the per-process loader comparison"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")

    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    num_images = max(batch_size * args.steps, args.loader_items)
    ids = write_synthetic_cocostuff(root, num_train=num_images, num_val=0, sizes=((640, 480), (480, 640), (500, 375)))[
        "train"
    ]
    model = IDDCModel(VisionTransformer(patch_size=args.patch_size)).to(device)
    head, probe = TrainableHead(model), LinearProbe().to(device)
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
        f"{name}, ViT-S/{args.patch_size}, {precision}, batch {batch_size}, {args.steps} steps a repeat, median of {args.repeats}"
    )
    print(f"training step (loader excluded): {step_s:.3f} s  ({batch_size / step_s:.1f} images/s)")
    print(
        f"its two backbone forwards alone: {forward_s:.3f} s  -> step / forwards = {statistics.median(ratios):.2f}x (goal <= 1.2x)"
    )
    print(
        f"training pairs, one process, 1 thread: {ours:.1f} items/s = {statistics.median(pair_ratios):.2f}x the whole-image "
        f"pipeline ({statistics.median(r[1] for r in pair_rates):.1f} items/s)"
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
    main()
