"""Does iddc work on this GPU, and how fast? One command, one report (docs/gpu.md).

    bash scripts/gpu_check.sh                          # everything on the GPU -> gpu_report.md
    bash scripts/gpu_check.sh --only train             # one step again (tests, train, loader, eval, sweep)
    bash scripts/gpu_check.sh --device cpu --quick     # small sizes on the CPU, no test step (what CI runs)

Steps:
  tests   the device-dependent tests (tests/test_device.py, marker "device") with IDDC_TEST_DEVICE
          set to the device: evaluation on the goldens against the CPU (fp32, TF32 off), one
          training epoch in bf16 and fp32, kill and resume with deterministic algorithms, a
          one-process NCCL group, predict.py on a large photo, the CRF pool beside the forwards;
  train   training steps of ViT-S/16 and S/8 at batch 64 in bf16 and fp32 on batches already on
          the GPU: images/s, share of the bare two-view backbone throughput, peak GPU memory;
  loader  the training loader's samples/s with 8 and 16 workers, against what the step needs;
  eval    sliding evaluation (eval.py's defaults): images/s and time against its bare forwards;
  sweep   the gain of several heads on one backbone pass, when engine/sweep.py exists.

Everything runs on synthetic data and random weights written to a temporary folder: no dataset,
no network, nothing installed. A check whose package is missing (pydensecrf, tensorboard, pytest)
is reported as "not run", never as passed. The report gives the machine (GPU, driver, torch, CUDA),
every figure with its setting and every speed goal as MET or MISSED. Exit code 0 when no
correctness check failed, 1 when one did (a failed test, or a step that crashed with something
other than running out of GPU memory), 2 for a bad option.
"""

import datetime
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from scripts import gpu_measure  # noqa: E402
from utils.cli import DEBUG_ENV, ArgumentParser, entry_point, resolve_device  # noqa: E402
from utils.errors import EXIT_OK, EXIT_PROBLEMS  # noqa: E402
from utils.files import check_writable_file, write_text_atomic  # noqa: E402
from utils.log import git_commit  # noqa: E402

STEPS = ("tests", "train", "loader", "eval", "sweep")
DEFAULT_OUTPUT = "gpu_report.md"
TEST_FILE = "tests/test_device.py"
TEST_TIMEOUT_S = 420
OPTIONAL_PACKAGES = ("pytest", "tensorboard", "pydensecrf", "faiss", "gdown")
# Goals (issue 16): the head, loss, probe and optimiser steps together cost at most a quarter of
# the bare forwards' time; sliding evaluation at most 1.3x its bare forwards.
TRAIN_GOAL_SHARE = 0.8
EVAL_GOAL_RATIO = 1.3
TRAINING_CONFIGS = (("S/16", "bf16"), ("S/16", "fp32"), ("S/8", "bf16"), ("S/8", "fp32"))
EVAL_CONFIGS = (("S/16", "fp32"), ("S/16", "bf16"), ("S/8", "fp32"), ("S/8", "bf16"))
# What each device test checks, for the report (tests/test_device.py has the details).
TEST_CHECKS = {
    "test_golden_evaluation_on_device": "evaluation on the goldens, fp32 with TF32 off: at most 0.1% of the scored "
    "pixels change class against the CPU, Acc and mIoU within 0.05 points",
    "test_one_training_epoch": "one training epoch of train.py: finite losses and metrics, checkpoints on the CPU; "
    "fp32's first step within 1% of the CPU's",
    "test_killed_training_resumes_to_the_straight_run": "kill (SIGKILL) and resume with deterministic algorithms, "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN benchmark off: within 1e-6 of the straight run",
    "test_one_process_group": "a one-process NCCL group: initialisation and the project's collectives",
    "test_predict_on_a_large_photo": "predict.py on a 4032x3024 photo with ViT-S/16: outputs, peak GPU memory",
    "test_crf_pool_beside_device_forwards": "the CRF worker pool beside GPU forwards: the maps of in-process CRFs",
}


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when a GPU is visible)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (1-block ViTs, tiny batches), test step skipped"
    )
    parser.add_argument("--only", choices=STEPS, default=None, help="run one step only")
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        default=DEFAULT_OUTPUT,
        help=f"the report (Markdown; default {DEFAULT_OUTPUT} in this folder)",
    )
    parser.add_renamed_option("--output", "--markdown", "as summarize.py names its Markdown file")
    return parser


@dataclass
class Report:
    """What the steps found: Markdown sections, correctness failures, speed goals."""

    device: torch.device
    quick: bool
    sections: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # (what, why) of failed correctness checks
    goals: list = field(default_factory=list)  # (goal, MET or MISSED, figure)
    figures: dict = field(default_factory=dict)  # measurements other steps use
    tests: str = "not run"  # the device tests' counts, for the verdict
    seconds: dict = field(default_factory=dict)

    def goal(self, text, met, figure):
        self.goals.append((text, "MET" if met else "MISSED", figure))


def log(message):
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def is_out_of_memory(err):
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def debugging(argv):
    args = sys.argv[1:] if argv is None else list(argv)
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def guarded(report, step, what, measure, debug):
    """``measure()``'s result, or None: running out of GPU memory is a figure, any other error a failure."""
    try:
        return measure()
    except Exception as err:
        if debug:
            raise
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        if is_out_of_memory(err):
            return f"out of memory ({first_line})"
        report.failures.append((f"{step}: {what}", f"{type(err).__name__}: {first_line}"))
        log(f"{step}: {what} failed: {type(err).__name__}: {first_line}")
        return f"FAILED: {type(err).__name__}: {first_line}"


# ---------------------------------------------------------------- machine


def machine_rows(device):
    rows = []
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        rows += [
            ("GPU", f"{torch.cuda.get_device_name(device)} ({device}, {torch.cuda.device_count()} visible)"),
            ("GPU memory", f"{properties.total_memory / 2**30:.1f} GiB"),
            ("compute capability", f"{properties.major}.{properties.minor}"),
            ("driver", nvidia_driver(device)),
        ]
    else:
        rows.append(("GPU", "none used (--device cpu)"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    nccl = nccl_version() if device.type == "cuda" else None
    rows += [
        ("torch", torch.__version__),
        ("CUDA (torch built with)", torch.version.cuda or "none"),
        ("cuDNN", str(cudnn) if cudnn else "none"),
        ("NCCL", nccl or "not used"),
        ("Python", platform.python_version()),
        ("CPU cores", f"{os.cpu_count()} ({platform.machine()})"),
        ("optional packages", ", ".join(f"{name} {package_state(name)}" for name in OPTIONAL_PACKAGES)),
        ("iddc commit", git_commit() or "unknown"),
    ]
    return rows


def nccl_version():
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return "not available"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def package_state(name):
    return "installed" if importlib.util.find_spec(name) is not None else "MISSING"


def nvidia_driver(device):
    """The NVIDIA driver's version, from nvidia-smi or /proc; 'unknown' when neither says."""
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        return first.split("Kernel Module")[-1].split()[0]
    except (OSError, IndexError):
        return "unknown"


# ---------------------------------------------------------------- step 1: the device tests


def step_tests(report, work_dir):
    """tests/test_device.py -m device in a pytest process with IDDC_TEST_DEVICE set; its JUnit XML
    gives each test's outcome and the figures the tests record."""
    if report.quick:
        return ["Not run: `--quick` skips the test step."]
    if importlib.util.find_spec("pytest") is None:
        return ["Not run: pytest is not installed (the device tests are pytest tests)."]
    junit = Path(work_dir) / "device_tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "device",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        TEST_FILE,
    ]
    env = dict(os.environ, IDDC_TEST_DEVICE=str(report.device), CUBLAS_WORKSPACE_CONFIG=":4096:8")
    shown = f"IDDC_TEST_DEVICE={report.device} CUBLAS_WORKSPACE_CONFIG=:4096:8 python -m pytest -m device {TEST_FILE}"
    log(f"tests: {shown}")
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        output = f"{err.stdout or ''}{err.stderr or ''}"
        report.failures.append(("tests", f"pytest did not finish within {TEST_TIMEOUT_S} s"))
    cases = read_junit(junit) if junit.is_file() else []
    lines = [f"Command: `{shown}`", ""]
    if not cases:
        report.failures.append(("tests", "pytest ran no test"))
        tail = "\n".join(output.strip().splitlines()[-15:])
        return [*lines, "FAILED: pytest ran no test. Its last lines:", "", "```", tail, "```"]
    lines += ["| check | result | figures |", "|---|---|---|"]
    for case in cases:
        base = case["name"].split("[")[0]
        label = TEST_CHECKS.get(base, base)
        if "[" in case["name"]:
            label += f" [{case['name'].split('[', 1)[1].rstrip(']')}]"
        if case["outcome"] == "failed":
            report.failures.append((f"tests: {case['name']}", case["message"]))
        result = {"passed": "passed", "failed": "**FAILED**", "skipped": "not run"}[case["outcome"]]
        if case["message"] and case["outcome"] != "passed":
            result += f": {case['message']}"
        figures = "; ".join(f"{name}: {value}" for name, value in case["properties"])
        lines.append(f"| {label} | {cell(result)} | {cell(figures)} |")
    counts = {outcome: sum(case["outcome"] == outcome for case in cases) for outcome in ("passed", "failed", "skipped")}
    report.tests = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} not run"
    gpus = torch.cuda.device_count() if report.device.type == "cuda" else 0
    lines += [
        "",
        f"Not checked: N GPUs training the one-GPU model (equality across GPUs) needs two GPUs and a "
        f"multi-process launch; this check uses one ({gpus} visible). tests/test_distributed_training.py "
        f"checks it on the CPU (gloo).",
    ]
    return lines


def read_junit(path):
    """[{name, outcome (passed/failed/skipped), message, properties [(name, value)]}] of a JUnit XML file."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = "skipped" if kind == "skipped" else "failed"
                message = (found.get("message") or found.text or kind).strip().splitlines()[0]
                break
        properties = [(prop.get("name"), prop.get("value")) for prop in case.iter("property")]
        cases.append({"name": case.get("name"), "outcome": outcome, "message": message, "properties": properties})
    return cases


def cell(text):
    """Text for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- step 2: measurements


def step_train(report, sizes, train_root, debug):
    device = report.device
    lines = [
        f"ViTs with random weights ({sizes.depth} blocks of {sizes.width} channels), batch {sizes.batch_size} "
        f"already on the device, {sizes.warmup_steps} warm-up then {plural(sizes.timed_steps, 'timed step')}, "
        "synchronised; "
        "a step is train_one_epoch's (backbone forward of both views, head, probe, IDDC loss in fp32, backward, "
        "both Adam steps, logged values read back). Bare forwards: the backbone on both views alone.",
        "",
        "| backbone | precision | step images/s | bare two-view forwards images/s | share of the bare throughput "
        "| peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for name, precision in TRAINING_CONFIGS:
        log(f"train: {name} {precision}")
        figures = guarded(
            report,
            "train",
            f"{name} {precision}",
            lambda: gpu_measure.measure_training(gpu_measure.BACKBONES[name], precision, sizes, train_root, device),
            debug,
        )
        if not isinstance(figures, dict):
            lines.append(f"| {name} | {precision} | {cell(figures)} | | | |")
            continue
        report.figures[("train", name, precision)] = figures
        lines.append(
            f"| {name} | {precision} | {figures['images_per_s']:.1f} | {figures['forwards_images_per_s']:.1f} | "
            f"{100 * figures['share_of_bare']:.0f}% | {memory(figures['peak_mib'])} |"
        )
    goal = ("S/16", "bf16")
    text = (
        f"S/16 batch-{sizes.batch_size} bf16 training at >= {TRAIN_GOAL_SHARE:.0%} of the bare two-view "
        "backbone throughput"
    )
    figures = report.figures.get(("train",) + goal)
    if figures is not None:
        report.goal(text, figures["share_of_bare"] >= TRAIN_GOAL_SHARE, f"{100 * figures['share_of_bare']:.0f}%")
    return lines


def plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def memory(mib):
    return "n/a (CPU)" if mib is None else f"{mib:.0f} MiB"


def step_loader(report, sizes, train_root, debug):
    device = report.device
    need = report.figures.get(("train", "S/16", "bf16"))
    if need is None:
        log("loader: measuring what the S/16 bf16 step needs first")
        need = guarded(
            report,
            "loader",
            "the S/16 bf16 step it feeds",
            lambda: gpu_measure.measure_training(16, "bf16", sizes, train_root, device),
            debug,
        )
    needed = need["images_per_s"] if isinstance(need, dict) else None
    lines = [
        f"train_loader on {sizes.loader_items} synthetic 640x480 JPEG images with labels, batch "
        f"{sizes.loader_batch_size}, pinned memory on CUDA; one epoch warms the persistent workers up, "
        f"the next two are timed (median). Needed: what the S/16 bf16 training step consumes.",
        "",
        "| workers | samples/s | the step needs | loader / need |",
        "|---|---|---|---|",
    ]
    rates = {}
    for workers in sizes.loader_workers:
        log(f"loader: {workers} workers")
        rate = guarded(
            report,
            "loader",
            f"{workers} workers",
            lambda: gpu_measure.measure_loader(train_root, workers, sizes, device),
            debug,
        )
        if not isinstance(rate, float):
            lines.append(f"| {workers} | {cell(rate)} | | |")
            continue
        rates[workers] = rate
        ratio = f"{rate / needed:.2f}x" if needed else "n/a"
        need_text = f"{needed:.1f} images/s" if needed else "not measured"
        lines.append(f"| {workers} | {rate:.1f} | {need_text} | {ratio} |")
    if needed and rates:
        best_workers, best = max(rates.items(), key=lambda item: item[1])
        if best >= needed:
            lines += [
                "",
                f"The loader keeps up: {best:.0f} samples/s with {plural(best_workers, 'worker')} >= {needed:.0f}.",
            ]
        else:
            lines += [
                "",
                f"The loader limits training: at most {best:.0f} samples/s ({plural(best_workers, 'worker')}) where "
                f"the step takes {needed:.0f}, so training runs at {100 * best / needed:.0f}% of the step's speed. "
                "What would lift it: more workers (one CPU core each), faster JPEG decoding (Pillow-SIMD, or "
                "decoding on the GPU with torchvision.io.decode_jpeg), or the resize and crops on the GPU.",
            ]
    return lines


def step_eval(report, sizes, eval_root, debug):
    device = report.device
    width, height = sizes.eval_image_size
    lines = [
        f"evaluate() with the sliding protocol (224 windows, overlap 75, flips) on "
        f"{plural(sizes.eval_images, f'synthetic {width}x{height} image')}, eval.py's defaults "
        f"(batch {sizes.eval_batch_size}, its loader workers), after a "
        "warm-up image; bare forwards: the backbone alone on the same windows and flips in the same batches.",
        "",
        "| backbone | precision | images/s | bare forwards images/s | evaluation / bare forwards time | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for name, precision in EVAL_CONFIGS:
        log(f"eval: {name} {precision}")
        figures = guarded(
            report,
            "eval",
            f"{name} {precision}",
            lambda: gpu_measure.measure_sliding_eval(gpu_measure.BACKBONES[name], precision, sizes, eval_root, device),
            debug,
        )
        if not isinstance(figures, dict):
            lines.append(f"| {name} | {precision} | {cell(figures)} | | | |")
            continue
        ratios.append((name, precision, figures["ratio"]))
        lines.append(
            f"| {name} | {precision} | {figures['images_per_s']:.2f} | {figures['forwards_images_per_s']:.2f} | "
            f"{figures['ratio']:.2f}x | {memory(figures['peak_mib'])} |"
        )
    for name, precision, ratio in ratios:
        report.goal(
            f"sliding evaluation {name} {precision} within {EVAL_GOAL_RATIO}x of its bare forwards",
            ratio <= EVAL_GOAL_RATIO,
            f"{ratio:.2f}x",
        )
    if any(ratio > EVAL_GOAL_RATIO for _, _, ratio in ratios):
        lines += [
            "",
            "Where the evaluation takes much longer than its forwards, the images' loading (2 workers by default "
            "on CUDA) or the CPU-side scoring is the limit: `eval.py --num-workers N` gives the loader more processes.",
        ]
    return lines


def step_sweep(report, sizes, train_root, debug):
    if importlib.util.find_spec("engine.sweep") is None:
        return ["Not available: engine/sweep.py does not exist in this checkout (train.py --sweep comes with it)."]
    log(f"sweep: {sizes.sweep_variants} variants")
    figures = guarded(
        report,
        "sweep",
        f"{sizes.sweep_variants} variants",
        lambda: gpu_measure.measure_sweep(16, "bf16", sizes, train_root, report.device),
        debug,
    )
    if not isinstance(figures, dict):
        return [f"S/16 bf16, {sizes.sweep_variants} variants: {figures}"]
    return [
        f"S/16 bf16, batch {sizes.batch_size}: one step of {figures['variants']} heads sharing one backbone pass (the "
        f"sweep's way, engine/sweep.py) takes {figures['shared_s'] * 1000:.0f} ms against "
        f"{figures['separate_s'] * 1000:.0f} ms for {figures['variants']} separate steps: a gain of "
        f"**{figures['gain']:.2f}x** (measured with this script's step, not engine/sweep.py's loop).",
    ]


# ---------------------------------------------------------------- the report


def render(report, argv, started, total_s):
    title = "iddc GPU check" + (" (--quick: small sizes, not the goals' settings)" if report.quick else "")
    verdict = (
        "**FAILED**: " + "; ".join(f"{what} ({why})" for what, why in report.failures)
        if report.failures
        else "no correctness check failed"
    )
    lines = [
        f"# {title}",
        "",
        f"`{shlex.join(['bash', 'scripts/gpu_check.sh', *argv])}`, {started:%Y-%m-%d %H:%M} UTC, "
        f"{total_s:.0f} s for the steps.",
        "",
        "## Verdict",
        "",
        f"- Correctness: {verdict}.",
        f"- Device tests: {report.tests}.",
    ]
    for text, state, figure in report.goals:
        lines.append(f"- Goal: {text}: **{state}** ({figure}).")
    if not report.goals:
        lines.append("- Goals: none measured in this run.")
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {cell(value)} |" for name, value in machine_rows(report.device)]
    titles = {
        "tests": "1. Correctness: the device tests",
        "train": "2. Training throughput",
        "loader": "3. Data loader",
        "eval": "4. Sliding evaluation",
        "sweep": "5. Sweep",
    }
    for step in STEPS:
        seconds = report.seconds.get(step)
        timing = f" ({seconds:.0f} s)" if seconds is not None else ""
        lines += ["", f"## {titles[step]}{timing}", "", *report.sections[step]]
    return "\n".join(lines) + "\n"


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    output = check_writable_file(args.markdown, "--markdown")
    device = torch.device(resolve_device(args.device))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    sizes = gpu_measure.QUICK if args.quick else gpu_measure.FULL
    report = Report(device=device, quick=args.quick)
    debug = debugging(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    selected = STEPS if args.only is None else (args.only,)
    with tempfile.TemporaryDirectory(prefix="iddc_gpu_check_") as work_dir:
        data = None
        for step in STEPS:
            if step not in selected:
                report.sections[step] = [f"Not run: `--only {args.only}`."]
                continue
            step_start = time.perf_counter()
            if step == "tests":
                report.sections[step] = step_tests(report, work_dir)
            else:
                if data is None:
                    log("writing synthetic data")
                    data = gpu_measure.write_data(work_dir, sizes)
                train_root, eval_root = data
                if step == "train":
                    report.sections[step] = step_train(report, sizes, train_root, debug)
                elif step == "loader":
                    report.sections[step] = step_loader(report, sizes, train_root, debug)
                elif step == "eval":
                    report.sections[step] = step_eval(report, sizes, eval_root, debug)
                else:
                    report.sections[step] = step_sweep(report, sizes, train_root, debug)
            report.seconds[step] = time.perf_counter() - step_start
    write_text_atomic(output, render(report, argv, started, time.perf_counter() - start))
    for text, state, figure in report.goals:
        print(f"goal {state}: {text} ({figure})")
    print(f"report written to {output}")
    if report.failures:
        print(f"error: {len(report.failures)} correctness check(s) failed; see {output}", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
