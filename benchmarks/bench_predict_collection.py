"""predict.py over a folder of photos: its rate against the bare backbone forwards of the same
windows, and its resident memory over a long job.

    python benchmarks/bench_predict_collection.py [--images 8] [--repeats 3] [--device cpu]
    python benchmarks/bench_predict_collection.py --memory [--memory-images 2000] [--memory-size 640 480] [--repeats 3]

Speed: ``--images`` synthetic scenes of 640x480 saved as JPEGs and a full-size ViT-S/16 IDDC
checkpoint with random weights (speed does not depend on them). ``predict.main`` runs over the
folder with its default options (all three PNGs, legend, shares.csv, predict.json; a new output
folder each repeat) in this process, against the bare backbone forwards of as many windows and
flips in the same batches (benchmarks/bench_eval.py's), just before and after it. Goal: predict at
least 1/1.3 of the bare forwards' rate (medians of the per-repeat ratios).

Memory (``--memory``): predict.py run as a user runs it, in a child process, over
``--memory-images`` JPEGs of ``--memory-size`` (640x480 by default; 100 distinct scenes,
hard-linked under as many names), its resident memory (VmRSS) read when the job's 100th record
appears and when its last one does. The model is a small random ViT, so that 2,000 images take
minutes on a CPU: what could grow with the number of images is the pipeline's (file lists,
records, outputs), not the model's. Goal: RSS after 2,000 images within 100 MB of RSS after 100.
"""

import os
import runpy
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a file, benchmarks/ is first on the path

import numpy as np
import torch
from PIL import Image

from benchmarks.bench_eval import bare_forwards
from benchmarks.common import check_counts, random_model, temporary_folder
from data.synthetic import make_scene
from engine.evaluation import window_boxes
from modules.checkpoint import iddc_state
from modules.model import IDDCModel
from modules.vit import VisionTransformer
from modules.weights import save_atomic
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device

WIDTH, HEIGHT = 640, 480
DISTINCT_SCENES = 100
EARLY_COUNT = 100  # RSS is compared with the RSS after this many images
POLL_SECONDS = 0.02


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8, help="speed: photos in the folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--memory", action="store_true", help="measure the resident memory over a long job instead")
    parser.add_argument("--memory-images", type=int, default=2000, help="memory: photos in the job")
    parser.add_argument(
        "--memory-size",
        type=int,
        nargs=2,
        default=(WIDTH, HEIGHT),
        metavar=("WIDTH", "HEIGHT"),
        help="memory: the photos' size (smaller photos make the long job shorter on a slow CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="fp32, or bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=32, help="windows (flips included) per backbone forward")
    return parser


def write_photos(folder, count, distinct, size=(WIDTH, HEIGHT)):
    """``count`` JPEGs of ``size`` (width, height) in ``folder``: ``distinct`` scenes, the rest hard
    links to them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"photo_{index:05d}.jpg"
        if index < distinct:
            Image.fromarray(make_scene(size[1], size[0], rng)[0]).save(path, quality=90)
        else:
            os.link(folder / f"photo_{index % distinct:05d}.jpg", path)
    return folder


def predict_argv(checkpoint, photos, out, args):
    return ["--checkpoint", str(checkpoint), "--input", str(photos), "--output-dir", str(out)] + [
        "--device",
        str(args.device),
        "--precision",
        args.precision,
        "--batch-size",
        str(args.batch_size),
    ]


def measure_speed(args, work):
    photos = write_photos(work / "photos", args.images, args.images)
    model = random_model(16)
    checkpoint = work / "vits16.pth"
    save_atomic(iddc_state(model), checkpoint)
    window_counts = [len(window_boxes(HEIGHT, WIDTH, 224, 75))] * args.images
    device = torch.device(args.device)
    vit = model.vit.to(device)
    # predict.py's main, from the command's file as a user runs it (an entry point, not a layered package).
    predict_main = runpy.run_path(str(REPO_ROOT / "predict.py"), run_name="bench_predict")["main"]
    predict_main(predict_argv(checkpoint, photos / "photo_00000.jpg", work / "warm", args))
    ratios, cpu_ratios, predict_times = [], [], []
    bare_before, bare_cpu_before = bare_forwards(vit, window_counts, args, device)
    for repeat in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        code = predict_main(predict_argv(checkpoint, photos, work / f"out{repeat}", args))
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if code != 0:
            raise RuntimeError(f"predict.py exited with {code}")
        bare_after, bare_cpu_after = bare_forwards(vit, window_counts, args, device)
        predict_times.append(seconds)
        ratios.append(((bare_before + bare_after) / 2) / seconds)
        cpu_ratios.append(((bare_cpu_before + bare_cpu_after) / 2) / cpu)
        bare_before, bare_cpu_before = bare_after, bare_cpu_after
    seconds = statistics.median(predict_times)
    print(
        f"device {device} ({torch.get_num_threads()} threads), ViT-S/16, {args.precision}, {args.images} JPEGs of "
        f"{WIDTH}x{HEIGHT}, {sum(window_counts)} windows (x2 with flips), batch {args.batch_size}, "
        f"median of {args.repeats}"
    )
    print(f"predict.py (default outputs): {seconds:8.2f} s  ({args.images / seconds:.2f} images/s)")
    print(
        f"predict rate / bare forwards' rate: {statistics.median(ratios):.2f} wall, "
        f"{statistics.median(cpu_ratios):.2f} CPU (medians of the per-repeat ratios; goal >= {1 / 1.3:.2f})"
    )
    print("per-repeat ratios, wall:", [round(r, 2) for r in ratios], "CPU:", [round(r, 2) for r in cpu_ratios])


def resident_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def watch_job(process, records, total):
    """{records done: RSS} when the job's EARLY_COUNT-th and last records appear."""
    readings = {}
    while process.poll() is None and len(readings) < 2:
        done = len(os.listdir(records)) if records.is_dir() else 0
        for mark in (EARLY_COUNT, total):
            if done >= mark and mark not in readings:
                readings[mark] = resident_bytes(process.pid)
        time.sleep(POLL_SECONDS)
    return readings


def measure_memory(args, work):
    photos = write_photos(
        work / "photos", args.memory_images, min(DISTINCT_SCENES, args.memory_images), tuple(args.memory_size)
    )
    torch.manual_seed(0)
    small = IDDCModel(VisionTransformer(patch_size=16, embed_dim=64, depth=1, num_heads=1))
    checkpoint = work / "small.pth"
    save_atomic(iddc_state(small), checkpoint)
    growth = []
    for repeat in range(args.repeats):
        out = work / f"out{repeat}"
        command = [sys.executable, str(REPO_ROOT / "predict.py"), *predict_argv(checkpoint, photos, out, args)]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        readings = {}
        watcher = threading.Thread(
            target=lambda: readings.update(watch_job(process, out / ".shares", args.memory_images))
        )
        watcher.start()
        code = process.wait()
        watcher.join()
        if code != 0 or len(readings) < 2:
            raise RuntimeError(f"predict.py exited with {code} after {sorted(readings)} readings")
        early, late = readings[EARLY_COUNT], readings[args.memory_images]
        growth.append(late - early)
        print(
            f"repeat {repeat + 1}: RSS after {EARLY_COUNT} images {early / 2**20:.1f} MiB, after "
            f"{args.memory_images} {late / 2**20:.1f} MiB (+{(late - early) / 2**20:.1f} MiB), "
            f"{time.perf_counter() - start:.0f} s"
        )
    print(
        f"RSS growth from image {EARLY_COUNT} to image {args.memory_images}: "
        f"median {statistics.median(growth) / 1e6:.1f} MB "
        f"of {args.repeats} (goal: within 100 MB)"
    )


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = resolve_device(args.device)
    check_counts(args, {"--images": 1, "--repeats": 1, "--batch-size": 1, "--memory-images": EARLY_COUNT + 1})
    for side in args.memory_size:
        check_at_least(side, "--memory-size", 1)
    with temporary_folder("bench_predict_collection") as work:
        if args.memory:
            measure_memory(args, work)
        else:
            measure_speed(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
