"""The page's cost over predict.py's: one photo from upload to result through app.py's API.

    python benchmarks/bench_app.py [--repeats 5] [--width 640] [--height 480] [--device cpu]

A randomly initialised full-size ViT-S/16 (speed does not depend on the weights) is saved as a
checkpoint and served by app.py, started as a user starts it (a child process on 127.0.0.1, a free
port). Both timings use a warm
model (one untimed request first), the same synthetic scene and predict.py's defaults (flip):

- predict: engine/segment.py's segment() on the photo reader's image, the function predict.py calls;
- page: gradio_client's ``segment`` request, from the upload of the file to the four results
  downloaded (overlay, colour map, clusters PNG, shares), as a script or the browser gets them.

The goal (docs/app.md): the page takes at most 1.2x predict's time.
"""

import logging
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import check_counts, random_model, temporary_folder, timed
from data.photos import read_photo
from data.synthetic import make_scene
from engine.segment import segment
from modules.checkpoint import iddc_state
from utils.cli import ArgumentParser, entry_point, resolve_device
from utils.errors import ReportedError
from utils.optional import require

GOAL = 1.2
ROOT = Path(__file__).resolve().parents[1]
SERVER_START_S = 300


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--width", type=int, default=640, help="width of the synthetic photo")
    parser.add_argument("--height", type=int, default=480, help="height of the synthetic photo")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(server, url, log):
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urlopen(url, timeout=2):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                lines = log.read_text(errors="replace").strip().splitlines()
                raise ReportedError(f"app.py did not serve {url}: {lines[-1] if lines else 'no output'}") from None
            time.sleep(0.2)


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_counts(args, {"--repeats": 1, "--width": 1, "--height": 1})
    device = resolve_device(args.device)
    gradio_client = require("gradio_client", "gradio_client", "benchmarks/bench_app.py")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with temporary_folder("bench_app") as folder:
        checkpoint = folder / "vits16_random.pth"
        model = random_model(16)
        torch.save(iddc_state(model), checkpoint)
        photo = folder / "scene.jpg"
        scene, _ = make_scene(args.height, args.width, np.random.default_rng(0))
        Image.fromarray(scene).save(photo, quality=92)
        model = model.to(device)

        def predict_once():
            image, original = read_photo(photo)
            segment(model, image, device, size=original)

        port = free_port()
        command = [sys.executable, str(ROOT / "app.py"), "--checkpoint", str(checkpoint), "--port", str(port)]
        with open(folder / "app.log", "wb") as log:
            server = subprocess.Popen([*command, "--device", device], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(server, f"http://127.0.0.1:{port}/", folder / "app.log")
            client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)

            def page_once():
                client.predict(gradio_client.handle_file(str(photo)), api_name="/segment")

            predict_once(), page_once()  # warm: the model loaded, the first forwards done
            times = {"predict": [], "page": []}
            for _ in range(args.repeats):
                times["predict"].append(timed(predict_once, device))
                times["page"].append(timed(page_once, device))
        finally:
            server.terminate()
            server.wait()
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    print(
        f"{args.width}x{args.height} photo, ViT-S/16 (random), flip, {device} "
        f"({torch.get_num_threads()} torch threads), median of {args.repeats}, warm model"
    )
    for name, seconds in times.items():
        print(f"  {name:8s} {medians[name]:6.3f} s  all: {[round(value, 3) for value in seconds]}")
    ratio = medians["page"] / medians["predict"]
    print(f"page / predict: {ratio:.2f}x (goal <= {GOAL}x): {'met' if ratio <= GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
