"""Training speed: seconds per step, the share spent in the two backbone forwards (the floor for a
frozen backbone), and data-loader samples/s against the step rate.

    python benchmarks/bench_train.py [--batch-size 16] [--steps 4] [--device cpu] [--precision fp32]

Uses synthetic 640x480 scenes and a randomly initialised full-size ViT-S (speed does not depend on
the weights).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import TimedBackbone, sync  # noqa: E402
from data.synthetic import write_synthetic_cocostuff  # noqa: E402
from modules.loss import IDDCLoss  # noqa: E402
from modules.model import IDDCModel, LinearProbe  # noqa: E402
from modules.vit import VisionTransformer  # noqa: E402
from utils.trainer import TrainableHead, train_loader, train_one_epoch  # noqa: E402


class Quiet:
    def info(self, *args):
        pass

    def write(self, **values):
        pass


def loader_rate(loader, batches):
    """Samples/s of the loader alone (decode, flip, resize, crop, normalise)."""
    start = time.perf_counter()
    seen = 0
    for index, batch in enumerate(loader):
        seen += batch["image"].shape[0]
        if index + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=4, help="timed steps a repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch-size", type=int, default=16, choices=(16, 8))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")

    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    write_synthetic_cocostuff(root, num_train=batch_size * args.steps, num_val=0, sizes=((640, 480), (480, 640), (500, 375)))
    timed = TimedBackbone(VisionTransformer(patch_size=args.patch_size))
    model = IDDCModel(timed.inner).to(device)
    model.backbone.model = timed
    head, probe = TrainableHead(model), LinearProbe().to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-4)
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
    loss_fn = IDDCLoss()
    loader = train_loader(root, batch_size, 0, args.num_workers, device)

    step_times, backbone_shares, loader_rates = [], [], []
    for repeat in range(args.repeats + 1):  # the first repeat warms up
        timed.seconds = 0.0
        sync(device)
        start = time.perf_counter()
        train_one_epoch(model, head, probe, loader, loss_fn, optimizer, probe_optimizer, epoch=repeat, step=0, seed=0,
                        device=device, precision=precision, log_every=10**9, logger=Quiet(), jsonl=Quiet())
        sync(device)
        elapsed = time.perf_counter() - start
        if repeat:
            step_times.append(elapsed / args.steps)
            backbone_shares.append(timed.seconds / elapsed)
            loader_rates.append(loader_rate(loader, args.steps))

    step_s = statistics.median(step_times)
    print(f"device {device} ({torch.get_num_threads()} threads), ViT-S/{args.patch_size}, {precision}, batch {batch_size}, "
          f"{args.steps} steps a repeat, {args.num_workers} loader workers, median of {args.repeats}")
    print(f"seconds per step:            {step_s:.3f}  ({batch_size / step_s:.1f} training images/s)")
    print(f"share in the two backbone forwards: {100 * statistics.median(backbone_shares):.1f}%")
    print(f"data loader alone:           {statistics.median(loader_rates):.1f} samples/s  vs  step rate {batch_size / step_s:.1f} samples/s")
    print("repeats (s/step, backbone share, loader samples/s):",
          [(round(a, 3), round(b, 3), round(c, 1)) for a, b, c in zip(step_times, backbone_shares, loader_rates)])


if __name__ == "__main__":
    main()
