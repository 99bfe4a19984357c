"""Checks that depend on the device: on the CPU by default, on a GPU with IDDC_TEST_DEVICE=cuda.

The tests marked ``device`` take the ``test_device`` fixture (tests/conftest.py). In the normal
suite they run on the CPU with tiny models and few images, so that their code is exercised on every
run; ``scripts/gpu_check.sh`` runs them on the GPU (``-m device``) and puts their outcomes, and
the figures they record with ``record_property``, in its report. On the CPU the golden evaluation
is the reference itself, so only its cheapest case runs here (tests/test_eval.py checks the rest).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import save_released, small_model, start_command_line, wait_exit
from PIL import Image
from test_train import max_weight_difference, read_log

import predict as predict_cli
import train as train_cli
from data.synthetic import make_scene, write_synthetic_cocostuff
from engine.evaluation import evaluate, make_protocol, resize_nearest
from engine.metrics import segmentation_metrics
from engine.outputs import PNG_SUFFIXES
from engine.training import StopRequests, probe_loss, upsample_probe_logits
from modules.checkpoint import load_iddc_model
from modules.loss import IDDCLoss
from utils import distributed
from utils.constants import IGNORE_INDEX
from utils.precision import tf32_settings

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 27
# Tolerances of an fp32 GPU evaluation against the CPU (TF32 off).
MAX_CHANGED_FRACTION = 0.001
MAX_METRIC_DIFFERENCE = 0.05
# A resumed run against the straight one, deterministic algorithms on.
RESUME_TOLERANCE = 1e-6
# Peak GPU memory allowed to predict.py on a 12-megapixel photo with ViT-S/16 (it stitches band by band).
PREDICT_PEAK_LIMIT_MIB = 2048


def on_gpu(device):
    return device.type == "cuda"


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) and cuDNN benchmark off while the block runs."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


@contextlib.contextmanager
def cpu_threads(count):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def require_module(name, what):
    """Skip (reported as "not run" by the GPU check, never as passed) when ``name`` is missing."""
    try:
        __import__(name)
    except ImportError:
        pytest.skip(f"{name} is not installed, so {what} is not checked")


# ---------------------------------------------------------------- evaluation on the goldens


def evaluate_with_maps(model, data_root, protocol, device, limit):
    """evaluate() and every image's (prediction, label) on the scoring grid, in split order."""
    maps = []

    def keep(sample, pred):
        maps.append((resize_nearest(pred, protocol.score_size), resize_nearest(sample["label"], protocol.score_size)))

    result = evaluate(
        model, data_root, protocol, device=device, num_workers=0, progress=False, limit=limit, on_image=keep
    )
    return result, maps


@pytest.mark.device
@pytest.mark.parametrize("protocol_name", ["sliding", "resize320"])
def test_golden_evaluation_on_device(test_device, fake_checkpoint, golden_dir, protocol_name, record_property):
    """fp32 evaluation of the original's fake ViT-S/16 on the golden fixture: the goldens' confusion
    matrix (the original code's, an independent reference on every device), and on a GPU (TF32 off)
    at most 0.1% of the scored pixels changing class against the CPU, with Acc and mIoU within 0.05
    points of it. On the CPU there is no second device to compare with: the goldens are the check."""
    gpu = on_gpu(test_device)
    if not gpu and protocol_name == "sliding":
        pytest.skip("on the CPU this is tests/test_eval.py::test_matches_original_goldens")
    golden = json.loads((golden_dir / f"eval_vits16_{protocol_name}.json").read_text())
    limit = None if gpu else 1  # the CPU checks the first image against its own golden matrix
    expected = np.array(golden["hist_raw"] if limit is None else golden["per_image"][0]["hist_raw"])
    protocol = make_protocol(protocol_name)
    model, _ = load_iddc_model(fake_checkpoint, patch_size=16)
    settings = tf32_settings()
    result, maps = evaluate_with_maps(model.to(test_device), golden_dir / "cocostuff", protocol, test_device, limit)
    assert tf32_settings() == settings, "fp32 evaluation must restore the TF32 settings it changed"
    # The CPU is within 200 counts of the goldens; each pixel the GPU may change moves two more.
    allowed = 200 + (2 * MAX_CHANGED_FRACTION * expected.sum() if gpu else 0)
    assert np.abs(result.confusion - expected).sum() <= allowed
    golden_metrics = segmentation_metrics(expected)
    assert result.metrics["acc"] == pytest.approx(golden_metrics["acc"], abs=MAX_METRIC_DIFFERENCE)
    assert result.metrics["miou"] == pytest.approx(golden_metrics["miou"], abs=MAX_METRIC_DIFFERENCE)
    if not gpu:
        return
    with cpu_threads(os.cpu_count() or 1):
        reference, reference_maps = evaluate_with_maps(
            model.cpu(), golden_dir / "cocostuff", protocol, torch.device("cpu"), limit
        )
    scored = changed = 0
    for (pred, label), (reference_pred, _) in zip(maps, reference_maps, strict=True):
        counted = label < NUM_CLASSES  # (320, 320): the pixels the confusion matrix counts
        scored += int(counted.sum())
        changed += int(((pred != reference_pred) & counted).sum())
    acc_difference = abs(result.metrics["acc"] - reference.metrics["acc"])
    miou_difference = abs(result.metrics["miou"] - reference.metrics["miou"])
    record_property("scored pixels", scored)
    record_property("pixels that change class against the CPU", f"{changed} ({100 * changed / scored:.4f}%)")
    record_property("Acc / mIoU difference to the CPU (points)", f"{acc_difference:.4f} / {miou_difference:.4f}")
    assert changed <= MAX_CHANGED_FRACTION * scored
    assert acc_difference <= MAX_METRIC_DIFFERENCE and miou_difference <= MAX_METRIC_DIFFERENCE


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff_device")
    write_synthetic_cocostuff(root, num_train=8, num_val=1, sizes=((256, 240), (240, 256)))
    return root


def train_args(data_root, dino_file, output_dir, device, *extra):
    """train.py on 8 images, batch 4 (2 steps an epoch), every step logged and checkpointed."""
    return [
        "--data-root",
        str(data_root),
        "--backbone-weights",
        str(dino_file),
        "--output-dir",
        str(output_dir),
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        # On a GPU the loader's workers and pinned memory are part of what is checked.
        "--num-workers",
        "2" if on_gpu(device) else "0",
        "--device",
        str(device),
        "--log-every",
        "1",
        "--val-limit",
        "1",
        "--checkpoint-every",
        "1",
        *extra,
    ]


def train_rows(output_dir):
    return [row for row in read_log(output_dir) if row["kind"] == "train"]


@pytest.fixture(scope="module")
def straight_run(test_device, train_data, dino_file, tmp_path_factory):
    """Two epochs in train.py's default precision (bf16 on a GPU, fp32 on the CPU) with deterministic
    algorithms (on a GPU also CUBLAS_WORKSPACE_CONFIG, set by tests/conftest.py) and cuDNN benchmark
    off: the reference of the resume test."""
    require_module("tensorboard", "training (train.py logs to TensorBoard)")
    out = tmp_path_factory.mktemp("straight")
    with deterministic_algorithms():
        assert train_cli.main(train_args(train_data, dino_file, out, test_device, "--epochs", "2")) == 0
    return out


@pytest.mark.device
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_training_epoch(test_device, train_data, dino_file, tmp_path, precision, request, record_property):
    """train.py: finite losses and metrics, checkpoints on the CPU (bf16 with --cudnn-benchmark); on
    a GPU in fp32 the first step's loss within 1% of the CPU's (same weights, data and negatives;
    TF32 convolutions)."""
    require_module("tensorboard", "training (train.py logs to TensorBoard)")
    gpu = on_gpu(test_device)
    if precision == "fp32" and not gpu:
        out = request.getfixturevalue("straight_run")  # on the CPU the resume test's run is one (twice)
    else:
        out = tmp_path / precision
        args = train_args(train_data, dino_file, out, test_device, "--epochs", "1", "--precision", precision)
        # bf16 is the fast setting, the one to try cuDNN's benchmark mode with.
        benchmark = ["--cudnn-benchmark"] if precision == "bf16" else []
        try:
            assert train_cli.main([*args, *benchmark]) == 0
            assert torch.backends.cudnn.benchmark == bool(benchmark)
        finally:
            torch.backends.cudnn.benchmark = False
    rows, vals = train_rows(out), [row for row in read_log(out) if row["kind"] == "val"]
    assert [row["step"] for row in rows] == list(range(1, 2 * len(vals) + 1))  # 2 steps an epoch
    for row in rows:
        assert all(np.isfinite(row[name]) for name in ("total", "pos", "neg", "balance", "probe")), row
    assert all(np.isfinite(val["miou"]) and np.isfinite(val["probe_miou"]) for val in vals)
    state = torch.load(out / "last_model.pth", weights_only=True)
    for part in ("backbone", "head_nonlinear", "classifier"):
        for tensor in state[part].values():
            assert tensor.device.type == "cpu" and torch.isfinite(tensor).all()
    record_property(f"first step loss ({precision})", f"{rows[0]['total']:.6f}")
    if gpu and precision == "fp32":
        cpu_out = tmp_path / "cpu"
        cpu_args = train_args(train_data, dino_file, cpu_out, torch.device("cpu"), "--epochs", "1")
        assert train_cli.main([*cpu_args, "--precision", "fp32"]) == 0
        cpu_first = train_rows(cpu_out)[0]
        record_property("first step loss on the CPU", f"{cpu_first['total']:.6f}")
        assert rows[0]["total"] == pytest.approx(cpu_first["total"], rel=1e-2)


# A training run killed (SIGKILL) right after its N-th resume file is in place, with deterministic
# algorithms on: the same as a kill between two steps, at a known step.
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
torch.use_deterministic_algorithms(True)
torch.backends.cudnn.benchmark = False
kill_after, argv = int(sys.argv[1]), sys.argv[2:]
replace, resume_files = os.replace, []

def replace_then_kill(source, target, **kwargs):
    replace(source, target, **kwargs)
    if Path(target).name == "resume.pth":
        resume_files.append(target)
        if len(resume_files) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_kill
import train
sys.exit(train.main(argv))
"""


@pytest.mark.device
def test_killed_training_resumes_to_the_straight_run(
    test_device, train_data, dino_file, straight_run, tmp_path, record_property
):
    """With deterministic algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8 and cuDNN benchmark off, a run
    killed (SIGKILL, in its own process) in the middle of its second epoch, then resumed, ends within
    1e-6 of the straight run."""
    if on_gpu(test_device):
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8"), "set by tests/conftest.py"
    killed = tmp_path / "killed"
    args = train_args(train_data, dino_file, killed, test_device, "--epochs", "2")
    # Resume files land after steps 1 (mid-epoch), 2 (end of epoch 0) and 3 (mid-epoch 1): kill after the third.
    if on_gpu(test_device):  # a fresh interpreter: CUDA does not survive a fork
        done = subprocess.run(
            [sys.executable, "-c", KILLED_RUN, "3", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        code, output = done.returncode, done.stdout[-2000:] + done.stderr[-2000:]
    else:  # forked from this process, which imported torch and the project already
        script, streams = tmp_path / "killed_run.py", (tmp_path / "stdout.txt", tmp_path / "stderr.txt")
        script.write_text(KILLED_RUN)
        pid = start_command_line(script, ["3", *args], *streams)
        code = wait_exit(pid, time.monotonic() + 300)  # None: not ended in 300 s
        output = "".join(path.read_text(errors="replace")[-2000:] for path in streams)
    assert code == -signal.SIGKILL, output
    state = torch.load(killed / "resume.pth", weights_only=True)
    assert state["resume_at"] == {"epoch": 1, "batch": 1} and state["step"] == 3
    with deterministic_algorithms():
        args = train_args(train_data, "/nonexistent-not-needed", killed, test_device, "--epochs", "2", "--resume")
        assert train_cli.main(args) == 0
    difference = max_weight_difference(straight_run / "last_model.pth", killed / "last_model.pth")
    record_property("largest weight difference, resumed against straight", f"{difference:.3g}")
    assert difference <= RESUME_TOLERANCE
    assert [row["step"] for row in train_rows(killed)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- one-process group


@pytest.mark.device
def test_one_process_group(test_device, tmp_path, record_property):
    """A one-process group (NCCL on a GPU, gloo on the CPU): it starts, every collective the project
    uses keeps a single process's values, the loss across processes equals the loss alone, and a
    stop request is agreed on. Equality across GPUs needs two of them and is not checked here."""
    import torch.distributed as dist

    gpu = on_gpu(test_device)
    backend = "nccl" if gpu else "gloo"
    if gpu and not dist.is_nccl_available():
        pytest.fail("this torch build has no NCCL")
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(4, 16, 5, 5, generator=generator).to(test_device) for _ in range(2)]  # (B, C, h, w)
    logits = [torch.randn(4, 6, 5, 5, generator=generator).to(test_device).requires_grad_() for _ in range(2)]
    loss_fn = IDDCLoss()
    alone = loss_fn(*features, *logits, neg_shifts=[1, 2, 1])
    alone_grads = torch.autograd.grad(alone["total"], logits)
    options = {"device_id": test_device} if gpu else {}
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1, **options)
    try:
        assert distributed.is_initialized() and distributed.world_size() == 1 and distributed.is_main()
        values = torch.arange(6.0, device=test_device)
        assert torch.equal(distributed.all_reduce_sum(values), values)
        assert torch.equal(distributed.all_reduce_max(values), values)
        assert torch.equal(distributed.all_reduce_sum(values.cpu()), values.cpu())  # a CPU tensor as well
        assert torch.equal(distributed.gather_batch(values[None]), values[None])
        leaf = values.clone().requires_grad_()
        (distributed.gather_batch_with_grad(leaf[None]) * 2).sum().backward()
        assert torch.equal(leaf.grad, torch.full_like(values, 2))
        parameters = [torch.nn.Parameter(torch.ones(3, device=test_device))]
        parameters[0].grad = torch.full_like(parameters[0], 0.5)
        distributed.all_reduce_gradients(parameters)
        distributed.broadcast_parameters(parameters)
        assert torch.equal(parameters[0].grad, torch.full_like(parameters[0], 0.5))
        assert torch.equal(parameters[0].data, torch.ones(3, device=test_device))
        distributed.barrier()
        with StopRequests() as stop:
            assert not stop.requested()
        # The global-batch path of the loss (gathers, all-reduces), which a group of one would skip.
        together = loss_fn._forward_global(*features, *logits, [1, 2, 1], 1)
        together_grads = torch.autograd.grad(together["objective"], logits)
        assert float(together["total"].detach()) == pytest.approx(float(alone["total"].detach()), rel=1e-6)
        for a, b in zip(together_grads, alone_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        record_property("backend", dist.get_backend())
    finally:
        dist.destroy_process_group()
    record_property("equality across GPUs", "not checked (needs two GPUs)")


# ---------------------------------------------------------------- predict on a large photo


@pytest.mark.device
def test_predict_on_a_large_photo(test_device, fake_checkpoint, tmp_path, record_property):
    """predict.py on a 12-megapixel photo with ViT-S/16 (a smaller photo and ViT on the CPU): the
    three PNGs at the photo's size, and on a GPU a peak memory that stays bounded (band-wise stitching)."""
    gpu = on_gpu(test_device)
    width, height = (4032, 3024) if gpu else (560, 420)
    checkpoint = fake_checkpoint if gpu else save_released(small_model(), tmp_path / "tiny.pth")
    image, _ = make_scene(height // 4, width // 4, np.random.default_rng(0))  # drawn small, then enlarged
    photo = tmp_path / "photo.jpg"
    Image.fromarray(image).resize((width, height), Image.BILINEAR).save(photo, quality=90)
    if gpu:
        torch.cuda.synchronize(test_device)
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(test_device)
        torch.cuda.reset_peak_memory_stats(test_device)
    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(photo),
        "--output-dir",
        str(out),
        "--device",
        str(test_device),
    ]
    assert predict_cli.main(args) == 0
    for suffix in PNG_SUFFIXES.values():
        with Image.open(out / f"photo{suffix}") as written:
            assert written.size == (width, height)
    if gpu:
        torch.cuda.synchronize(test_device)
        peak_mib = (torch.cuda.max_memory_allocated(test_device) - start) / 2**20
        record_property(f"peak GPU memory, {width}x{height} photo, ViT-S/16 fp32", f"{peak_mib:.0f} MiB")
        assert peak_mib < PREDICT_PEAK_LIMIT_MIB


# ---------------------------------------------------------------- CRF pool beside the forwards


@pytest.mark.device
def test_crf_pool_beside_device_forwards(test_device, tmp_path):
    """CRF worker processes forked beside the device's forwards (a live CUDA context on a GPU) give
    the maps of CRFs computed in the evaluating process."""
    require_module("pydensecrf", "the CRF pool")
    write_synthetic_cocostuff(tmp_path, num_train=0, num_val=2, sizes=((224, 224),))
    model = small_model().to(test_device)
    protocol = make_protocol("sliding", flip=False, crf=True)
    common = dict(device=test_device, num_workers=0, progress=False)
    pooled = evaluate(model, tmp_path, protocol, crf_workers=2, **common)
    inline = evaluate(model, tmp_path, protocol, crf_workers=0, **common)
    assert pooled.num_images == 2
    np.testing.assert_array_equal(pooled.confusion, inline.confusion)


# ---------------------------------------------------------------- building blocks (CPU only, not marked)


@pytest.fixture(params=[False, True], ids=["default", "deterministic"])
def deterministic_mode(request):
    """Both forms of the probe's upsampling and loss: the default one (F.interpolate, F.cross_entropy,
    bit for bit the original's) and the one taken under torch.use_deterministic_algorithms(True)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)


def test_probe_upsampling_matches_interpolate(deterministic_mode):
    """The matmul form of the probe's bilinear upsampling (deterministic backward on CUDA) gives
    F.interpolate's values and gradients."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 14, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    ours = upsample_probe_logits(logits, (224, 192))
    reference = F.interpolate(logits, size=(224, 192), mode="bilinear", align_corners=True)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    weights = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), logits)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=1e-10)


def test_probe_loss_is_the_cross_entropy_over_labelled_pixels(deterministic_mode):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, NUM_CLASSES, 20, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (3, 20, 16), generator=generator)
    labels[:, :4] = IGNORE_INDEX
    value, objective = probe_loss(logits, labels)
    reference = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    assert float(value) == pytest.approx(float(reference.detach()), rel=1e-6)
    (ours_grad,) = torch.autograd.grad(objective, logits)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-9)
    unlabelled = torch.full_like(labels, IGNORE_INDEX)
    assert float(probe_loss(logits, unlabelled)[0]) == 0.0
