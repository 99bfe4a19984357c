"""Shared fixtures: paths to the golden reference data of the original IDDC code, and the device of
the device-dependent tests.

``IDDC_TEST_DEVICE`` (cpu, cuda or cuda:N; default cpu) is the one switch that makes the tests
marked ``device`` (tests/test_device.py) run on a GPU: ``IDDC_TEST_DEVICE=cuda python3 -m pytest
-m device tests/test_device.py``, which is what scripts/gpu_check.sh runs.
"""

import faulthandler
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from http_server import closed_port_url, drive_certificates, drive_proxy, http_server  # noqa: E402, F401  (fixtures)

GOLDEN = Path(__file__).resolve().parent / "golden"
TEST_DEVICE_ENV = "IDDC_TEST_DEVICE"
if os.environ.get(TEST_DEVICE_ENV, "cpu").startswith("cuda"):
    # cuBLAS reads it once, when it starts: deterministic matmuls (the resume test) need it set first.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# Far above the slowest test with its fixtures (about 30 s): a hung test ends the run with every
# thread's traceback instead of holding CI until its limit.
TEST_TIME_LIMIT_S = 600


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test's setup (module fixtures included), call and teardown within TEST_TIME_LIMIT_S."""
    faulthandler.dump_traceback_later(TEST_TIME_LIMIT_S, exit=True)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


# The test files that take longest, longest first: with `-n auto --dist loadfile` (README) a file is
# the unit handed to a test process (its module fixtures serve all its tests), and handing these out
# first leaves no process alone with a long one at the end.
SLOW_FILES_FIRST = (
    "test_eval.py",
    "test_distributed_training.py",
    "test_backbones.py",
    "test_crf.py",
    "test_app.py",
    "test_datasets_e2e.py",
    "test_train.py",
    "test_sweep.py",
    "test_demo.py",
    "test_gpu_check.py",
    "test_device.py",
    "test_user_start.py",
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"device: runs on the device named by {TEST_DEVICE_ENV} (cpu by default; scripts/gpu_check.sh)"
    )
    missing = [name for name in SLOW_FILES_FIRST if not (ROOT / "tests" / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FILES_FIRST names no file: {', '.join(missing)}")
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # pytest-xdist: the collection's order, not its own by test count


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


@pytest.fixture(scope="session")
def test_device():
    """The torch.device of the device-dependent tests, from IDDC_TEST_DEVICE (default cpu).

    A GPU asked for but not visible fails the tests that use it rather than skipping them.
    """
    import torch

    name = os.environ.get(TEST_DEVICE_ENV, "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        pytest.fail(f"{TEST_DEVICE_ENV}={name}: expected cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        pytest.fail(f"{TEST_DEVICE_ENV}={name}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            pytest.fail(f"{TEST_DEVICE_ENV}={name}: no CUDA GPU is visible to torch")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN


# pytest-xdist's `-n auto`: one test process per core, at most this many (each holds torch and
# its fixtures, about 1.5 GB at the most).
MAX_TEST_PROCESSES = 4


def pytest_xdist_auto_num_workers(config):
    return max(1, min(MAX_TEST_PROCESSES, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    """Torch threads: the cores shared out among the test processes, at most 2 each."""
    import torch

    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // processes)))


@pytest.fixture(scope="session")
def dino_file(tmp_path_factory):
    """A small random ViT (2 blocks, 64 channels, seed 3) saved as a DINO release file: the backbone
    of the training tests. Read only."""
    from helpers import save_dino, small_model

    return save_dino(small_model(seed=3), tmp_path_factory.mktemp("dino") / "dino_small.pth")


@pytest.fixture(scope="session")
def fake_checkpoint(tmp_path_factory):
    """The original's fake ViT-S/16 checkpoint (random numbers, seed 4321), made by the golden script."""
    from helpers import make_golden_checkpoint

    return make_golden_checkpoint(tmp_path_factory.mktemp("golden_ckpt") / "ckpt16.pth")
