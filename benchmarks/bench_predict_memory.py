"""Peak memory (max RSS) of predict.py on one large photo, with the default options.

    python benchmarks/bench_predict_memory.py [--width 4032 --height 3024] [--baseline REV] [--device cpu]

Writes a synthetic scene of the given size as a JPEG and a full-size ViT-S/16 IDDC checkpoint
with random weights (memory does not depend on the weights), then runs ``predict.py`` as a user
does, in a child process, and reads the child's own peak RSS from the kernel (os.wait4). With
``--baseline REV`` the same run is made with the predict.py of git revision REV (its whole tree,
extracted to a temporary folder), and the two cluster maps are compared pixel for pixel.
"""

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data.synthetic import make_scene  # noqa: E402
from modules.checkpoint import iddc_state  # noqa: E402
from modules.model import IDDCModel  # noqa: E402
from modules.vit import VisionTransformer  # noqa: E402
from modules.weights import save_atomic  # noqa: E402
from utils.cli import ArgumentParser


def extract_revision(revision, target):
    """The tree of ``revision`` (git archive) in ``target``; returns its predict.py."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return Path(target) / "predict.py"


def run_predict(script, photo, checkpoint, out_dir, device):
    """(peak RSS in bytes, seconds, cluster map) of one predict.py run in a child process."""
    command = [
        sys.executable,
        str(script),
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(photo),
        "--output-dir",
        str(out_dir),
        "--device",
        device,
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode()
    if child.returncode != 0:
        raise SystemExit(f"{script} failed with exit code {child.returncode}:\n{errors[-2000:]}")
    with Image.open(Path(out_dir) / f"{photo.stem}_clusters.png") as clusters:
        return usage.ru_maxrss * 1024, seconds, np.array(clusters)  # ru_maxrss is in KiB on Linux


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=4032)
    parser.add_argument("--height", type=int, default=3024)
    parser.add_argument("--baseline", default=None, metavar="REV", help="also measure predict.py of this git revision")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_predict_memory_"))
    image, _ = make_scene(args.height, args.width, np.random.default_rng(0))
    photo = work / "photo.jpg"
    Image.fromarray(image).save(photo, quality=92)
    checkpoint = work / "vits16.pth"
    save_atomic(iddc_state(IDDCModel(VisionTransformer(patch_size=16))), checkpoint)

    runs = {"this tree": REPO_ROOT / "predict.py"}
    if args.baseline:
        runs[f"baseline {args.baseline}"] = extract_revision(args.baseline, work / "baseline")
    print(
        f"predict.py on a {args.width}x{args.height} JPEG, ViT-S/16 (random weights), default options, "
        f"device {args.device}, {os.cpu_count()} CPUs"
    )
    maps = {}
    for name, script in runs.items():
        peak, seconds, maps[name] = run_predict(script, photo, checkpoint, work / name.replace(" ", "_"), args.device)
        print(f"{name:<28} peak RSS {peak / 2**30:6.2f} GiB   {seconds:7.1f} s")
    if len(maps) == 2:
        current, baseline = maps.values()
        print(
            f"cluster maps identical: {bool(np.array_equal(current, baseline))} "
            f"({int((current != baseline).sum())} of {current.size} pixels differ)"
        )


if __name__ == "__main__":
    main()
