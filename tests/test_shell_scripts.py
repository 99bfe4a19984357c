"""val_coco27.sh and train_coco27.sh as a user runs them (bash, environment variables)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from forked_python import run_script as run_bash
from helpers import save_dino, save_released, small_model
from http_server import Reply

from data.synthetic import write_synthetic_cocostuff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=4, num_val=2, sizes=((320, 256), (240, 240)))
    return root


def run_script(script, *args, env=None, cwd=None):
    """``bash script args`` as a user runs it; its Python command lines forked (tests/forked_python.py)."""
    return run_bash(["bash", str(ROOT / script), *args], env=dict(os.environ, **(env or {})), cwd=cwd)


def test_val_script_downloads_missing_checkpoint_then_evaluates(tmp_path, data_root, http_server, drive_proxy):
    checkpoint = save_released(small_model(), tmp_path / "served.pth")
    # Google Drive (behind the loopback HTTPS proxy) serves the small file directly.
    http_server.routes["uc"] = lambda request: Reply(
        checkpoint.read_bytes(), headers={"Content-Disposition": 'attachment; filename="c.pth"'}
    )
    out = tmp_path / "result.json"
    done = run_script(
        "val_coco27.sh",
        "vits16",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--output-json",
        str(out),
        env={"DATA_ROOT": str(data_root), "CHECKPOINT_DIR": str(tmp_path / "ckpts"), "HTTPS_PROXY": drive_proxy.url},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "downloading the released checkpoint" in done.stdout
    assert (tmp_path / "ckpts" / "cocostuff27_vits16.pth").read_bytes() == checkpoint.read_bytes()
    assert http_server.requests_for("uc")[0].query == {"id": "11a_S4t7KbyQJRzKLnhSIoSQ59ykPCxBl"}
    result = json.loads(out.read_text())
    assert result["protocol"] == "sliding" and result["num_images"] == 2


def test_val_script_offline_and_without_data_root(tmp_path, data_root, closed_port_url):
    done = run_script(
        "val_coco27.sh",
        "vits8",
        env={"DATA_ROOT": str(data_root), "CHECKPOINT_DIR": str(tmp_path), "HTTPS_PROXY": closed_port_url.rstrip("/")},
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "1TNkAyky3903eRRH8OEvrB9EyCKxgNA8w" in done.stdout + done.stderr
    assert not (tmp_path / "cocostuff27_vits8.pth").exists()
    env = {key: value for key, value in os.environ.items() if key != "DATA_ROOT"}
    done = subprocess.run(["bash", str(ROOT / "val_coco27.sh")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("error: DATA_ROOT is not set")


def test_train_script_passes_flags_over_the_config(tmp_path, data_root):
    dino = save_dino(small_model(), tmp_path / "dino.pth")
    out = tmp_path / "run"
    done = run_script(
        "train_coco27.sh",
        "vits16",
        "--backbone-weights",
        str(dino),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--final-protocol",
        "none",
        "--output-dir",
        str(out),
        env={"DATA_ROOT": str(data_root)},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    config = (out / "config.yaml").read_text()
    assert "balance_weight: 0.4" in config and "batch_size: 2" in config and "seed: 1" in config
    assert (out / "last_model.pth").is_file()
