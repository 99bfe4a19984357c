"""Dense CRF cost: seconds per image, and whole evaluations with and without it.

    python benchmarks/bench_crf.py [--images 8] [--repeats 3] [--protocol center320] [--device cpu]

Part 1 times one CRF (engine/crf.py: STEGO's 10 iterations and kernels) on 27-class probabilities
at 320x320 (the center320 crop) and 640x480 (a COCO image under the sliding protocol). Part 2 runs
evaluate() on synthetic 640x480 scenes with a randomly initialised full-size ViT-S (speed does not
depend on the weights) three ways in the same process: no CRF, CRF in the worker pool beside the
forwards (default workers), and CRF in this process after each forward (--crf-workers 0).
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import check_counts, random_model, synthetic_dataset
from data.synthetic import make_scene
from data.transforms import to_normalized_tensor
from engine.crf import CRFPool, crf_inputs, crf_maps, default_workers
from engine.evaluation import evaluate, make_protocol
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device


def smooth_probabilities(num_classes, height, width, generator):
    """Blob-like class probabilities, as upsampled patch logits look."""
    coarse = torch.randn(1, num_classes, height // 16, width // 16, generator=generator) * 3
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0].softmax(
        dim=0
    )  # (K, H, W)


def time_single_crf(height, width, repeats, generator):
    """A synthetic scene (the bilateral kernel's cost depends on the image: noise would be far slower)."""
    scene, _ = make_scene(height, width, np.random.default_rng(0))
    image = to_normalized_tensor(Image.fromarray(scene))  # (3, H, W)
    probs = smooth_probabilities(27, height, width, generator)
    prepare, refine = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        image_bgr, probs_np = crf_inputs(image, probs)
        prepare.append(time.perf_counter() - start)
        start = time.perf_counter()
        crf_maps(image_bgr, probs_np)
        refine.append(time.perf_counter() - start)
    return statistics.median(prepare), statistics.median(refine)


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8, help="synthetic 640x480 images evaluated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs a measurement")
    parser.add_argument(
        "--protocol", default="center320", choices=("center320", "sliding"), help="evaluation protocol (eval.py's)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per backbone forward")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading processes")
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = resolve_device(args.device)
    check_counts(args, {"--images": 1, "--repeats": 1, "--batch-size": 1})
    check_at_least(args.num_workers, "--num-workers", 0)
    generator = torch.Generator().manual_seed(0)
    print(
        f"device {args.device} ({torch.get_num_threads()} torch threads), CRF workers by default: {default_workers()}"
    )

    for height, width in ((320, 320), (480, 640)):
        prepare, refine = time_single_crf(height, width, args.repeats, generator)
        print(
            f"one CRF, 27 classes, {height}x{width}: {refine:.3f} s (+ {prepare:.3f} s to prepare the inputs), "
            f"median of {args.repeats}"
        )

    start = time.perf_counter()
    with CRFPool() as pool:
        pool.submit(torch.zeros(3, 8, 8), torch.full((27, 8, 8), 1 / 27), None)
        pool.finished(wait_all=True)
    print(f"worker pool start-up ({default_workers()} workers, first result): {time.perf_counter() - start:.2f} s")

    with synthetic_dataset("cocostuff27", "val", args.images, ((640, 480),)) as (root, _):
        times = time_evaluations(args, root)
    baseline = statistics.median(times["no CRF"])
    print(
        f"evaluate(), {args.protocol} + flip, {args.images} images of 640x480, ViT-S/16 fp32, batch {args.batch_size}, "
        f"median of {args.repeats} (pool start-up included)"
    )
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(
            f"  {name:45s} {median:7.2f} s  ({args.images / median:.2f} images/s, {median / baseline:.2f}x no CRF)  "
            f"all: {[round(s, 2) for s in seconds]}"
        )
    return 0


def time_evaluations(args, root):
    """Seconds of each repeat of evaluate() without CRF, with the CRF pool, and with the CRF in this process."""
    model = random_model(16, args.device)
    common = dict(device=args.device, batch_size=args.batch_size, num_workers=args.num_workers, progress=False)
    evaluate(model, root, make_protocol(args.protocol, flip=True), limit=1, **common)  # warm-up
    runs = {
        "no CRF": (False, None),
        f"CRF, pool of {default_workers()} beside the forwards": (True, None),
        "CRF in this process after each forward": (True, 0),
    }
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (crf, workers) in runs.items():
            result = evaluate(
                model, root, make_protocol(args.protocol, flip=True, crf=crf), crf_workers=workers, **common
            )
            times[name].append(result.seconds)
    return times


if __name__ == "__main__":
    sys.exit(main())
