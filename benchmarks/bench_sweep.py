"""Sweeps: what N variants on one backbone pass cost against N single runs, and their peak memory.

    python benchmarks/bench_sweep.py [--batch-size 16] [--steps 10] [--warmup 2] [--repeats 3] [--variants 4 8]
    python benchmarks/bench_sweep.py --device cuda --precision bf16 --batch-size 64

Training: synthetic 640x480 scenes, a randomly initialised ViT-S/16 (speed does not depend on the
weights), the configs' loader (8 workers), train_one_epoch itself. Per repeat it times ``--steps``
steps after ``--warmup`` steps of: the shared part alone (data and backbone, no head), one variant
(a single run), and sweeps of N variants; single runs are one after another, so N of them cost N
times one. With h = (single - shared) / shared, the cost of one variant's head, loss, probe and
optimiser steps as a fraction of the shared part, a sweep of N can at best cost (1 + hN) / ((1 + h) N)
of N single runs. Validation (resize320, every variant's heads and probes on one backbone forward)
is timed apart. Evaluation: 4 checkpoints of one backbone (sliding, fp32, no CRF) in one pass
against 4 separate evaluations. Memory: the peak resident memory of the training process (its
loader workers apart) over a few steps with 1, 4 and 8 variants, each in a fresh process; on CUDA
the peak allocated GPU memory as well.
"""

import argparse
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import torch

from benchmarks.common import check_counts, mib, random_vit, sync, temporary_folder
from benchmarks.peak_memory import reset_resident_high_water, resident_high_water
from data.synthetic import write_synthetic_cocostuff
from engine.evaluation import evaluate_heads, make_protocol
from engine.trainer import HeadsOnBackbone, heads_on
from engine.training import HeadRun, TrainableHead, train_loader, train_one_epoch
from modules.loss import IDDCLoss
from modules.model import IDDCModel
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.errors import ReportedError
from utils.log import LogGroup

CONFIG_WORKERS = 8  # configs/train_cocostuff27_*.yaml
SIZES = ((640, 480), (480, 640), (500, 375))
# Variant i: lambda1, t+ and lr change from one variant to the next (their values only move the masks).
NEG_WEIGHTS = (1.4, 1.0, 2.0, 0.7)
POS_THRESHOLDS = (0.2, 0.25, 0.15, 0.3)


class MeasurementError(ReportedError):
    """A measurement's own process failed (exit 1: a problem the run met, as out of memory)."""

    exit_code = 1


def backbone(device):
    """A randomly initialised ViT-S/16 in a model (the first variant's)."""
    return IDDCModel(random_vit(patch_size=16)).to(device)


def build(num_variants, device, base):
    """``num_variants`` head runs on ``base``'s backbone (no logs): variant i has its own lambda1, t+ and lr."""
    runs = []
    for index in range(num_variants):
        model, probe = heads_on(base.vit, base.num_classes)
        model.to(device)
        probe.to(device)
        head = TrainableHead(model)
        loss_fn = IDDCLoss(pos_threshold=POS_THRESHOLDS[index % 4], neg_weight=NEG_WEIGHTS[(index // 4) % 4])
        runs.append(
            HeadRun(
                head,
                probe,
                loss_fn,
                torch.optim.Adam(head.parameters(), lr=5e-4 * (1 + index)),
                torch.optim.Adam(probe.parameters(), lr=1e-3),
                LogGroup(),
                f"v{index}",
            )
        )
    return runs


def timed_epoch(vit, runs, loader, epoch, warmup, device, precision):
    """Seconds a step over the epoch's batches after the first ``warmup`` (loader waits included)."""
    stamps = []

    def after_step(batches_done, step):
        sync(device)
        stamps.append(time.perf_counter())

    quiet_epoch(vit, runs, loader, epoch, device, precision, after_step)
    return (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def quiet_epoch(vit, runs, loader, epoch, device, precision, after_step=None):
    """One training epoch of ``runs`` over ``loader``, logging nothing."""
    quiet = logging.getLogger("bench_sweep")
    quiet.setLevel(logging.WARNING)
    train_one_epoch(
        vit,
        runs,
        loader,
        epoch=epoch,
        step=0,
        seed=0,
        device=device,
        precision=precision,
        log_every=10**9,
        logger=quiet,
        after_step=after_step,
    )


def training_times(args, root, device, precision):
    """Per repeat: {0: shared part, 1: one variant, N: N variants} seconds a step."""
    counts = [0, 1, *args.variants]
    loader = train_loader(
        root, args.batch_size, 0, CONFIG_WORKERS, device, limit=(args.warmup + args.steps) * args.batch_size
    )
    base = backbone(device)
    built = {count: build(count, device, base) for count in counts}
    times, epoch = [], 0
    for repeat in range(args.repeats):
        measured = {}
        for count in counts if repeat % 2 == 0 else counts[::-1]:  # alternate the order: a drift of load evens out
            measured[count] = timed_epoch(base.vit, built[count], loader, epoch, args.warmup, device, precision)
            epoch += 1
        times.append(dict(sorted(measured.items())))
        print(f"repeat {repeat}: " + ", ".join(f"{n} variants {s:.3f} s/step" for n, s in measured.items()), flush=True)
    return times


def evaluation_seconds(model, root, protocol, device, precision, batch_size, images):
    sync(device)
    start = time.perf_counter()
    results = evaluate_heads(
        model,
        root,
        protocol,
        device=device,
        precision=precision,
        batch_size=batch_size,
        limit=images,
        progress=False,
    )
    sync(device)
    return time.perf_counter() - start, results


def validation_times(args, root, device, precision):
    """Seconds of one resize320 validation of 1 and N variants (heads and probes) on one pass."""
    out, base = {}, backbone(device)
    for count in (1, *args.variants):
        runs = build(count, device, base)
        module = HeadsOnBackbone(base.vit, [(run.head.head_nonlinear, run.head.classifier, run.probe) for run in runs])
        seconds = [
            evaluation_seconds(module, root, make_protocol("resize320"), device, precision, 32, args.val_images)[0]
            for _ in range(args.repeats)
        ]
        out[count] = statistics.median(seconds)
    return out


def shared_evaluation(args, root, device):
    """Per repeat (one pass, four separate passes) seconds of 4 checkpoints' sliding evaluation, fp32."""
    base = backbone(device)
    runs = build(4, device, base)
    protocol = make_protocol("sliding")
    heads = [(run.head.head_nonlinear, run.head.classifier, None) for run in runs]
    together = HeadsOnBackbone(base.vit, heads)
    apart = []
    for run in runs:  # each checkpoint as eval.py loads it: its own model
        model = IDDCModel(base.vit, base.num_classes)
        model.head_nonlinear, model.classifier = run.head.head_nonlinear, run.head.classifier
        apart.append(model)
    rounds = []
    for _ in range(args.repeats):
        one, shared_results = evaluation_seconds(together, root, protocol, device, "fp32", 32, args.eval_images)
        separate = [evaluation_seconds(m, root, protocol, device, "fp32", 32, args.eval_images) for m in apart]
        for result, (_, (alone,)) in zip(shared_results, separate):
            assert (result.confusion == alone.confusion).all(), "one pass must score each checkpoint as alone"
        rounds.append((one, sum(seconds for seconds, _ in separate)))
        print(f"evaluation of 4 checkpoints: one pass {one:.1f} s, four passes {rounds[-1][1]:.1f} s", flush=True)
    return rounds


def memory_child(args, root, device, precision):
    """In a fresh process: peak resident memory over ``--memory-steps`` steps of ``--memory-child``
    variants (the kernel's high-water mark, reset before the steps: loader workers are not counted)."""
    base = backbone(device)
    runs = build(args.memory_child, device, base)
    loader = train_loader(root, args.batch_size, 0, CONFIG_WORKERS, device, limit=args.memory_steps * args.batch_size)
    before = reset_resident_high_water()
    if before is None:
        raise ReportedError("the peak memory needs Linux 4.0 or later (/proc/self/clear_refs)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    quiet_epoch(base.vit, runs, loader, 0, device, precision)
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    print(f"MEMORY {args.memory_child} {before} {resident_high_water()} {gpu}")


def memory_peaks(args, root):
    """{variants: (RSS before the steps, peak RSS, peak GPU bytes)}, each from a fresh process."""
    out = {}
    for count in (1, *args.variants):
        command = [
            sys.executable,
            __file__,
            "--memory-child",
            str(count),
            "--data-root",
            str(root),
            "--batch-size",
            str(args.batch_size),
            "--memory-steps",
            str(args.memory_steps),
            "--device",
            args.device,
            "--precision",
            args.precision,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise MeasurementError(
                f"the memory measurement of {count} variant(s) failed: {lines[-1]}\n" + "\n".join(lines[:-1])
            )
        line = next(line for line in done.stdout.splitlines() if line.startswith("MEMORY"))
        _, _, before, peak, gpu = line.split()
        out[count] = (int(before), int(peak), int(gpu))
    return out


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps a measurement")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs a measurement")
    parser.add_argument("--variants", type=int, nargs="+", default=[4, 8], help="sweep sizes compared with 1 variant")
    parser.add_argument("--val-images", type=int, default=8, help="images of the timed validation")
    parser.add_argument("--eval-images", type=int, default=2, help="640x480 images of the sliding evaluation")
    parser.add_argument("--memory-steps", type=int, default=3, help="training steps of the peak-memory runs")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="default: fp32 (the issue's)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("training", "validation", "evaluation", "memory"),
        help="measurements not to run (default: none skipped)",
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", default=None, help=argparse.SUPPRESS)
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.precision = args.precision or "fp32"
    args.device = resolve_device(args.device)
    counts = ("--batch-size", "--steps", "--warmup", "--repeats", "--val-images", "--eval-images", "--memory-steps")
    check_counts(args, dict.fromkeys(counts, 1))
    for count in args.variants:
        check_at_least(count, "--variants", 1)
    device = torch.device(args.device)
    if args.memory_child is not None:
        memory_child(args, Path(args.data_root), device, args.precision)
        return 0
    with temporary_folder("sweep") as root:
        run(args, root, device)
    return 0


def run(args, root, device):
    """Every measurement on synthetic data written under ``root``."""
    train_images = max(args.warmup + args.steps, args.memory_steps) * args.batch_size
    write_synthetic_cocostuff(
        root, num_train=train_images, num_val=max(args.val_images, args.eval_images), sizes=SIZES, seed=0
    )
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)"
    print(
        f"{name}, ViT-S/16, {args.precision}, batch {args.batch_size}, {CONFIG_WORKERS} loader workers, "
        f"{args.steps} timed steps after {args.warmup}, medians of {args.repeats}",
        flush=True,
    )
    if "training" not in args.skip:
        times = training_times(args, root, device, args.precision)
        shared = statistics.median(t[0] for t in times)
        single = statistics.median(t[1] for t in times)
        h_values = [(t[1] - t[0]) / t[0] for t in times]
        h = statistics.median(h_values)
        print(f"shared part (data + backbone): {shared:.3f} s/step; one variant: {single:.3f} s/step; h = {h:.3f}")
        for count in args.variants:
            ratios = [t[count] / (count * t[1]) for t in times]
            limits = [(1 + hv * count) / ((1 + hv) * count) for hv in h_values]
            print(
                f"{count} variants: {statistics.median(t[count] for t in times):.3f} s/step = "
                f"{statistics.median(ratios):.3f} of {count} single runs (limit (1 + hN) / ((1 + h) N) = "
                f"{statistics.median(limits):.3f}; per repeat {[round(r, 3) for r in ratios]})"
            )
    if "validation" not in args.skip:
        seconds = validation_times(args, root, device, args.precision)
        print(
            f"validation, resize320 on {args.val_images} images: "
            + ", ".join(f"{count} variant(s) {s:.2f} s" for count, s in seconds.items())
        )
    if "evaluation" not in args.skip:
        rounds = shared_evaluation(args, root, device)
        ratios = [one / apart for one, apart in rounds]
        one, apart = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        print(
            f"evaluation of 4 checkpoints of one backbone (sliding, fp32, {args.eval_images} images): one pass "
            f"{one:.1f} s vs 4 passes {apart:.1f} s "
            f"= {statistics.median(ratios):.2f}x (goal <= 0.4x; per repeat {[round(r, 2) for r in ratios]})"
        )
    if "memory" not in args.skip:
        for count, (before, peak, gpu) in memory_peaks(args, root).items():
            extra = f", GPU peak {mib(gpu)} MiB" if device.type == "cuda" else ""
            print(
                f"memory, {count} variant(s): peak RSS {mib(peak)} MiB over {args.memory_steps} steps "
                f"({mib(peak - before)} MiB above the RSS before the first step){extra}"
            )


if __name__ == "__main__":
    sys.exit(main())
