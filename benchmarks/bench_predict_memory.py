"""Peak memory of predict.py on one large photo, with the default options.

    python benchmarks/bench_predict_memory.py [--width 4032 --height 3024] [--baseline REV] [--device cpu]

Writes a synthetic scene of the given size as a JPEG and a full-size ViT-S/16 IDDC checkpoint
with random weights (memory does not depend on the weights) to a temporary folder, then runs
``predict.py`` as a user does, in a fresh child process, and reports that process's peak resident
memory (the high-water mark of benchmarks/peak_memory.py, which launches it; on CUDA also the most
it allocated on the GPU). With ``--baseline REV`` the same run is made with the predict.py of git
revision REV (its whole tree, extracted to the temporary folder), and the two cluster maps are
compared pixel for pixel.
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a file, benchmarks/ is first on the path

import numpy as np
from PIL import Image

from benchmarks.common import check_counts, random_model, temporary_folder
from data.synthetic import make_scene
from modules.checkpoint import iddc_state
from modules.weights import save_atomic
from utils.cli import ArgumentParser, entry_point, resolve_device
from utils.errors import OptionError

LAUNCHER = Path(__file__).resolve().with_name("peak_memory.py")


def extract_revision(revision, target):
    """The tree of ``revision`` (git archive) in ``target``; returns its predict.py."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO_ROOT, capture_output=True)
    if archive.returncode != 0:
        raise OptionError(f"--baseline {revision}: not a revision of {REPO_ROOT} ({archive.stderr.decode().strip()})")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return Path(target) / "predict.py"


def run_predict(script, photo, checkpoint, out_dir, device):
    """(peak resident bytes, peak CUDA bytes or None, seconds, cluster map) of one predict.py run."""
    result_file = out_dir.with_name(out_dir.name + "_memory.json")
    options = ["--checkpoint", str(checkpoint), "--input", str(photo), "--output-dir", str(out_dir), "--device", device]
    start = time.perf_counter()
    child = subprocess.run(
        [sys.executable, str(LAUNCHER), str(result_file), str(script), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{script} failed with exit code {child.returncode}:\n{child.stderr.decode()[-2000:]}")
    memory = json.loads(result_file.read_text())
    with Image.open(Path(out_dir) / f"{photo.stem}_clusters.png") as clusters:
        return memory["peak_bytes"], memory.get("cuda_peak_bytes"), seconds, np.array(clusters)


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=4032, help="width of the synthetic JPEG")
    parser.add_argument("--height", type=int, default=3024, help="height of the synthetic JPEG")
    parser.add_argument("--baseline", default=None, metavar="REV", help="also measure predict.py of this git revision")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = resolve_device(args.device)
    check_counts(args, {"--width": 224, "--height": 224})
    with temporary_folder("bench_predict_memory") as work:
        runs = {"this tree": REPO_ROOT / "predict.py"}
        if args.baseline:
            runs[f"baseline {args.baseline}"] = extract_revision(args.baseline, work / "baseline")
        image, _ = make_scene(args.height, args.width, np.random.default_rng(0))
        photo = work / "photo.jpg"
        Image.fromarray(image).save(photo, quality=92)
        checkpoint = work / "vits16.pth"
        save_atomic(iddc_state(random_model(16)), checkpoint)
        print(
            f"predict.py on a {args.width}x{args.height} JPEG, ViT-S/16 (random weights), default options, "
            f"device {args.device}, {os.cpu_count()} CPUs"
        )
        maps = {}
        for name, script in runs.items():
            out_dir = work / name.replace(" ", "_")
            peak, cuda_peak, seconds, maps[name] = run_predict(script, photo, checkpoint, out_dir, args.device)
            on_gpu = "" if cuda_peak is None else f"   peak CUDA allocated {cuda_peak / 2**30:6.2f} GiB"
            print(f"{name:<28} peak RSS {peak / 2**30:6.2f} GiB{on_gpu}   {seconds:7.1f} s")
    if len(maps) == 2:
        current, baseline = maps.values()
        print(
            f"cluster maps identical: {bool(np.array_equal(current, baseline))} "
            f"({int((current != baseline).sum())} of {current.size} pixels differ)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
