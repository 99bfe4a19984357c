"""Shared fixtures: paths to the golden reference data of the original IDDC code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from http_server import closed_port_url, drive_certificates, drive_proxy, http_server  # noqa: E402, F401  (fixtures)

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def fake_checkpoint(tmp_path_factory):
    """The original's fake ViT-S/16 checkpoint (random numbers, seed 4321), made by the golden script."""
    path = tmp_path_factory.mktemp("golden_ckpt") / "ckpt16.pth"
    subprocess.run(
        [sys.executable, str(GOLDEN / "make_checkpoint.py"), "--seed", "4321", "--out", str(path)],
        check=True,
        capture_output=True,
    )
    return path
