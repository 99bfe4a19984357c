"""Sliding-window evaluation speed: images/s, the share of time spent in backbone forwards, peak memory.

    python benchmarks/bench_eval.py [--images 6] [--repeats 3] [--device cpu] [--precision fp32]
    python benchmarks/bench_eval.py --case cityscapes --images 2     # 2048x1024 Cityscapes-size images

Runs evaluate() on synthetic scenes (``--case coco``: 640x480 in the COCO-Stuff layout; ``--case
cityscapes``: 2048x1024 in the Cityscapes layout, scored on its 320x640 grid) with a randomly
initialised full-size ViT-S (speed does not depend on the weights) and, in the same process, the
bare backbone forwards of the same windows and flips in the same batches, before and after each
evaluation. Goal: evaluate() at most
1.3x the bare forwards. Peak memory during evaluate(), above what was in use before it
(benchmarks/common.py's PeakMemory): on CUDA the most allocated; on the CPU the resident high-water
mark of this process (data-loading workers are separate processes and not included).
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import torch

from benchmarks.common import PeakMemory, TimedBackbone, check_counts, random_vit, sync, synthetic_dataset
from engine.evaluation import evaluate, make_protocol, window_boxes
from modules.model import IDDCModel
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.precision import autocast_context

# case -> (dataset, (width, height) of the images, sliding score grid (H, W))
CASES = {"coco": ("cocostuff27", (640, 480), (320, 320)), "cityscapes": ("cityscapes27", (2048, 1024), (320, 640))}


def bare_forwards(vit, window_counts, args, device):
    """The backbone alone on as many windows (and flips), in the same batch sizes, as evaluate().

    Returns (wall seconds, CPU seconds of this process).
    """
    images_per_step = max(1, args.batch_size // 24)
    steps = [window_counts[i : i + images_per_step] for i in range(0, len(window_counts), images_per_step)]
    batches = [torch.randn(2 * sum(counts), 3, 224, 224, device=device) for counts in steps]  # windows and flips
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad(), autocast_context(device, args.precision):
        for batch in batches:
            for chunk in batch.split(args.batch_size):
                vit(chunk)
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--case", choices=sorted(CASES), default="coco", help="coco: 640x480 images; cityscapes: 2048x1024"
    )
    parser.add_argument("--images", type=int, default=6, help="synthetic images evaluated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs a measurement")
    parser.add_argument("--patch-size", type=int, default=16, choices=(16, 8), help="the random ViT-S's patch")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="fp32, or bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per backbone forward")
    parser.add_argument("--num-workers", type=int, default=None, help="default: evaluate()'s (0 on CPU, 2 on CUDA)")
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(resolve_device(args.device))
    check_counts(args, {"--images": 1, "--repeats": 1, "--batch-size": 1})
    check_at_least(args.num_workers, "--num-workers", 0)
    dataset, size, _ = CASES[args.case]
    with synthetic_dataset(dataset, "val", args.images, (size,)) as (root, _):
        measure(args, device, root)
    return 0


def measure(args, device, root):
    dataset, (width, height), score_size = CASES[args.case]
    timed = TimedBackbone(random_vit(args.patch_size))
    model = IDDCModel(timed.inner).to(device).eval()
    model.backbone.model = timed
    window_counts = [len(window_boxes(height, width, 224, 75))] * args.images
    protocol = make_protocol("sliding", score_size=score_size)
    common = dict(
        device=device,
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=False,
        dataset=dataset,
    )

    evaluate(model, root, protocol, limit=1, **common)  # warm-up
    eval_times, backbone_times, bare_times, peaks, ratios, cpu_ratios = [], [], [], [], [], []
    bare_before, bare_cpu_before = bare_forwards(timed.inner, window_counts, args, device)
    for _ in range(args.repeats):
        timed.seconds = 0.0
        start_cpu = time.process_time()
        with PeakMemory(device) as memory:
            result = evaluate(model, root, protocol, **common)
        eval_cpu = time.process_time() - start_cpu
        bare_after, bare_cpu_after = bare_forwards(timed.inner, window_counts, args, device)
        eval_times.append(result.seconds)
        backbone_times.append(timed.seconds)
        peaks.append(memory.peak)
        bare_times.append(bare_after)
        # Each evaluation against the bare forwards just before and after it: on a shared machine
        # the speed drifts between bursts, and a ratio of medians would mix them. CPU seconds of
        # this process (loader workers not included) are less disturbed by other processes.
        ratios.append(result.seconds / ((bare_before + bare_after) / 2))
        cpu_ratios.append(eval_cpu / ((bare_cpu_before + bare_cpu_after) / 2))
        bare_before, bare_cpu_before = bare_after, bare_cpu_after

    eval_s, in_backbone_s, bare_s = (statistics.median(t) for t in (eval_times, backbone_times, bare_times))
    print(
        f"device {device} ({torch.get_num_threads()} threads), ViT-S/{args.patch_size}, {args.precision}, "
        f"{args.images} images of {width}x{height} ({dataset}), {sum(window_counts)} windows (x2 with flips), "
        f"batch {args.batch_size}, median of {args.repeats}"
    )
    print(f"evaluate():            {eval_s:8.2f} s  ({args.images / eval_s:.2f} images/s)")
    print(f"  of which backbone:   {in_backbone_s:8.2f} s  ({100 * in_backbone_s / eval_s:.1f}% of the evaluation)")
    print(f"bare backbone forwards:{bare_s:8.2f} s")
    print(
        f"evaluation / bare forwards: {statistics.median(ratios):.2f}x wall, {statistics.median(cpu_ratios):.2f}x CPU "
        f"(medians of the per-repeat ratios; goal <= 1.3x)"
    )
    print("per-repeat ratios, wall:", [round(r, 2) for r in ratios], "CPU:", [round(r, 2) for r in cpu_ratios])
    if None in peaks:
        print("peak memory during evaluate(): not measured (the CPU measure needs Linux)")
    else:
        print(
            f"peak memory during evaluate(): {statistics.median(peaks) / 2**20:.0f} MiB above its start "
            f"({'allocated on ' + str(device) if device.type == 'cuda' else 'resident, main process'}; "
            f"max over repeats {max(peaks) / 2**20:.0f} MiB)"
        )
    print(
        "all repeats (eval, in-backbone, bare after):",
        [(round(a, 2), round(b, 2), round(c, 2)) for a, b, c in zip(eval_times, backbone_times, bare_times)],
    )


if __name__ == "__main__":
    sys.exit(main())
