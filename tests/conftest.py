"""Shared fixtures: paths to the golden reference data of the original IDDC code."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
