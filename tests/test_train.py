"""Training end to end on a synthetic set with a small ViT: losses, checkpoints, resume, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff
from helpers import save_dino, small_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=16, num_val=4, sizes=((320, 256), (200, 300), (288, 352), (240, 240)))
    return root


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    return save_dino(small_model(seed=3), tmp_path_factory.mktemp("dino") / "dino_small.pth")


def train_args(data_root, dino_file, output_dir, *extra):
    return ["--data-root", str(data_root), "--backbone-weights", str(dino_file), "--output-dir", str(output_dir),
            "--batch-size", "4", "--lr", "5e-3", "--num-workers", "0", "--device", "cpu", "--log-every", "2", *extra]


def read_log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def test_two_epochs_end_to_end(tmp_path, data_root, dino_file):
    out = tmp_path / "run"
    assert train_cli.main(train_args(data_root, dino_file, out, "--epochs", "2")) == 0
    epochs = [row for row in read_log(out) if row["kind"] == "val"]
    assert [row["epoch"] for row in epochs] == [0, 1]
    assert epochs[1]["train"]["total"] < epochs[0]["train"]["total"]
    assert all(np.isfinite(row["miou"]) and np.isfinite(row["probe_miou"]) for row in epochs)
    for name in ("best_model.pth", "last_model.pth"):
        state = torch.load(out / name, weights_only=True)  # the original code's default
        assert {"backbone", "head_nonlinear", "classifier"} <= set(state)
        assert all(key.startswith("model.") for key in state["backbone"])
        assert set(state["head_nonlinear"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert state["config"]["lr"] == 5e-3 and state["metrics"]["protocol"] == "resize320"
    assert (out / "config.yaml").is_file() and (out / "train.log").is_file()
    json_out = tmp_path / "eval.json"
    assert eval_cli.main(["--data-root", str(data_root), "--checkpoint", str(out / "last_model.pth"), "--device", "cpu",
                          "--num-workers", "0", "--protocol", "resize320", "--output-json", str(json_out)]) == 0
    # The same protocol and weights as the last validation during training give the same numbers.
    assert json.loads(json_out.read_text())["miou"] == pytest.approx(epochs[1]["miou"])


def test_resume_continues_exactly(tmp_path, data_root, dino_file):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli.main(train_args(data_root, dino_file, straight, "--epochs", "2")) == 0
    assert train_cli.main(train_args(data_root, dino_file, resumed, "--epochs", "1")) == 0
    assert train_cli.main(train_args(data_root, "/nonexistent-not-needed", resumed, "--epochs", "2", "--resume")) == 0
    a = torch.load(straight / "last_model.pth")
    b = torch.load(resumed / "last_model.pth")
    for part in ("head_nonlinear", "classifier"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert [row["epoch"] for row in read_log(resumed) if row["kind"] == "val"] == [0, 1]
    assert b["epoch"] == 1 and b["step"] == a["step"]


def test_bad_batch_and_data(tmp_path, data_root, dino_file, capsys):
    assert train_cli.main(train_args(data_root, dino_file, tmp_path / "r", "--batch-size", "1")) == 2
    assert "--batch-size 1" in capsys.readouterr().err
    assert train_cli.main(train_args(data_root, dino_file, tmp_path / "r", "--batch-size", "64")) == 2
    assert "--batch-size 64: the training split has only 16 images" in capsys.readouterr().err
    assert train_cli.main(train_args(tmp_path / "none", dino_file, tmp_path / "r")) == 2
    assert "no such folder" in capsys.readouterr().err


def test_full_size_vits16_checkpoint_has_released_keys(tmp_path, data_root, golden_dir):
    dino = tmp_path / "dino_vits16.pth"
    subprocess.run([sys.executable, str(golden_dir / "make_checkpoint.py"), "--seed", "4321", "--dino", "--out", str(dino)],
                   check=True, capture_output=True)
    out = tmp_path / "run"
    assert train_cli.main(["--data-root", str(data_root), "--backbone-weights", str(dino), "--output-dir", str(out),
                           "--epochs", "1", "--batch-size", "2", "--train-limit", "2", "--val-limit", "1",
                           "--num-workers", "0", "--device", "cpu"]) == 0
    fingerprint = json.loads((golden_dir / "checkpoint_fingerprint.json").read_text())["tensors"]
    state = torch.load(out / "last_model.pth", weights_only=True)
    ours = {f"{part}/{key}": list(value.shape) for part in ("backbone", "head_nonlinear", "classifier") for key, value in state[part].items()}
    assert ours == {key: value["shape"] for key, value in fingerprint.items()}


def torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ddp_two_processes_gloo(tmp_path, data_root, dino_file):
    out = tmp_path / "ddp"
    torchrun("train.py", *train_args(data_root, dino_file, out, "--epochs", "1"))
    rows = read_log(out)
    assert [row["epoch"] for row in rows if row["kind"] == "val"] == [0]  # rank 0 alone writes
    assert sorted(p.name for p in out.iterdir()) == ["best_model.pth", "config.yaml", "last_model.pth", "log.jsonl", "resume.pth", "train.log"]
    # Validation confusion summed over two processes equals the single-process one.
    single, double = tmp_path / "single.json", tmp_path / "double.json"
    common = ["--data-root", str(data_root), "--checkpoint", str(out / "last_model.pth"), "--device", "cpu",
              "--num-workers", "0", "--protocol", "resize320"]
    assert eval_cli.main([*common, "--output-json", str(single)]) == 0
    torchrun("eval.py", *common, "--output-json", str(double))
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two["confusion"] == one["confusion"] and two["num_images"] == one["num_images"] == 4


def test_negative_shifts_are_seeded_and_in_range():
    from utils.trainer import negative_shifts

    draws = np.array([negative_shifts(1, step, 16, 3) for step in range(300)])
    assert draws.min() == 1 and draws.max() == 14  # the original's randint(1, B - 1)
    assert negative_shifts(1, 5, 16, 3) == negative_shifts(1, 5, 16, 3) != negative_shifts(2, 5, 16, 3)
    assert negative_shifts(0, 0, 2, 4) == [1, 1, 1, 1]
