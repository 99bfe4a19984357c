"""N processes train the single-process model: the global batch split, not N smaller problems.

Every run is one epoch at lr 1e-3 on a small fixture; the N-process weights must end within 1e-5
(max abs) of one process with the same global batch (summation order differs, so not bitwise).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import max_weight_difference, read_log

import eval as eval_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff_ddp")
    write_synthetic_cocostuff(root, num_train=16, num_val=2, sizes=((256, 224), (224, 288), (240, 240)))
    return root


def args_for(data_root, dino_file, output_dir, batch_size, num_workers=1):
    return [
        "--data-root",
        str(data_root),
        "--backbone-weights",
        str(dino_file),
        "--output-dir",
        str(output_dir),
        "--batch-size",
        str(batch_size),
        "--lr",
        "1e-3",
        "--epochs",
        "1",
        "--num-workers",
        str(num_workers),
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--val-limit",
        "2",
    ]


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_root, dino_file):
    """One process, global batch 8 and 6 (2 steps each)."""
    runs = {}
    for batch_size in (8, 6):
        out = tmp_path_factory.mktemp(f"single_b{batch_size}")
        assert train_cli.main(args_for(data_root, dino_file, out, batch_size)) == 0
        runs[batch_size] = out
    return runs


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc, *args, timeout=400):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    done = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def assert_same_training(single_dir, multi_dir):
    """Same weights (within TOLERANCE), and the logged losses and pair counts are the global ones."""
    assert max_weight_difference(single_dir / "last_model.pth", multi_dir / "last_model.pth") <= TOLERANCE
    one = [row for row in read_log(single_dir) if row["kind"] == "train"]
    many = [row for row in read_log(multi_dir) if row["kind"] == "train"]
    assert [row["step"] for row in one] == [row["step"] for row in many]
    for a, b in zip(one, many):
        assert (a["n_pos"], a["n_neg"]) == (b["n_pos"], b["n_neg"])
        for name in ("total", "pos", "neg", "balance", "entropy", "probe"):
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), name


def assert_rank_zero_alone_wrote(out):
    """One run's files, written once (one TensorBoard event file), whatever the process count."""
    assert sorted(p.name for p in out.iterdir()) == [
        "best_model.pth",
        "config.yaml",
        "last_model.pth",
        "log.jsonl",
        "resume.pth",
        "tensorboard",
        "train.log",
    ]
    assert len(list((out / "tensorboard").iterdir())) == 1


@pytest.mark.parametrize("nproc,batch_size", [(2, 8), (2, 6)])
def test_processes_train_the_single_process_model(tmp_path, data_root, dino_file, single, nproc, batch_size):
    out = tmp_path / "ddp"
    torchrun(nproc, "train.py", *args_for(data_root, dino_file, out, batch_size))
    assert_same_training(single[batch_size], out)
    assert_rank_zero_alone_wrote(out)
    if (nproc, batch_size) == (2, 8):
        # Validation under torchrun sums the processes' confusion matrices: the single-process ones.
        common = [
            "--data-root",
            str(data_root),
            "--checkpoint",
            str(out / "last_model.pth"),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--protocol",
            "resize320",
        ]
        assert eval_cli.main([*common, "--output-json", str(tmp_path / "one.json")]) == 0
        torchrun(2, "eval.py", *common, "--output-json", str(tmp_path / "two.json"))
        one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
        assert two["confusion"] == one["confusion"] and two["num_images"] == one["num_images"] == 2


def test_two_nodes_through_train_script(tmp_path, data_root, dino_file, single):
    """train_coco27.sh on two 'machines' of two processes each (two launches on localhost, static
    rendezvous): four processes with 2 images each of the global batch of 8 train the one-process model."""
    out = tmp_path / "nodes"
    port = free_port()
    launches = []
    for node_rank in (0, 1):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            NNODES="2",
            NODE_RANK=str(node_rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            NPROC="2",
            PYTHON=sys.executable,
        )
        launches.append(
            subprocess.Popen(
                [
                    "bash",
                    str(ROOT / "train_coco27.sh"),
                    "vits16",
                    *args_for(data_root, dino_file, out, 8),
                    "--final-protocol",
                    "none",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [launch.communicate(timeout=400)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert_same_training(single[8], out)
    assert_rank_zero_alone_wrote(out)


def test_multi_node_script_needs_a_rendezvous(tmp_path, data_root):
    done = subprocess.run(
        ["bash", str(ROOT / "train_coco27.sh"), "vits16", "--data-root", str(data_root)],
        cwd=tmp_path,
        env=dict(os.environ, NNODES="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "NODE_RANK and MASTER_ADDR" in done.stderr
