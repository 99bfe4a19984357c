"""N processes train the single-process model: the global batch split, not N smaller problems.

Every run is one epoch at lr 1e-3 on a small fixture; the N-process weights must end within 1e-5
(max abs) of one process with the same global batch (summation order differs, so not bitwise).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import finish_ranks, free_port, start_ranks, user_env
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


def start_two_nodes(out, data_root, dino_file):
    """train_coco27.sh on two 'machines' of two processes each (two launches on localhost, static
    rendezvous, torchrun itself): four processes with 2 images each of the global batch of 8."""
    port = free_port()
    launches = []
    for node_rank in (0, 1):
        env = user_env(  # a user's environment: train.py must start from its own folder, no PYTHONPATH
            OMP_NUM_THREADS="1",
            NNODES="2",
            NODE_RANK=str(node_rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            NPROC="2",
            PYTHON=sys.executable,
        )
        command = ["bash", str(ROOT / "train_coco27.sh"), "vits16", *args_for(data_root, dino_file, out, 8)]
        launches.append(
            subprocess.Popen(
                [*command, "--final-protocol", "none"],
                cwd=out.parent,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return launches


def eval_args(data_root, checkpoint, output_json):
    return [
        "--data-root",
        str(data_root),
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--protocol",
        "resize320",
        "--output-json",
        str(output_json),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root, dino_file):
    """Every run of the tests, the independent ones at the same time: two machines of two processes
    (torchrun), two processes (forked ranks) training with global batches 8 and 6 and then
    evaluating the first model, and, in this process meanwhile, the one-process runs they must
    equal. {name: output folder}."""
    work = tmp_path_factory.mktemp("distributed")
    out = {name: work / name for name in ("nodes", "b8", "b6", "single_b8", "single_b6")}
    nodes = start_two_nodes(out["nodes"], data_root, dino_file)
    ranks = start_ranks(
        [
            ("train.py", args_for(data_root, dino_file, out["b8"], 8)),
            ("train.py", args_for(data_root, dino_file, out["b6"], 6)),
            ("eval.py", eval_args(data_root, out["b8"] / "last_model.pth", work / "two.json")),
        ],
        2,
        work,
    )
    for batch_size in (8, 6):  # one process, global batch 8 and 6 (2 steps each)
        assert train_cli.main(args_for(data_root, dino_file, out[f"single_b{batch_size}"], batch_size)) == 0
    finish_ranks(ranks)
    outputs = [launch.communicate(timeout=400)[0] for launch in nodes]
    assert [launch.returncode for launch in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return out


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


@pytest.mark.parametrize("batch_size", [8, 6])
def test_processes_train_the_single_process_model(runs, batch_size):
    """Two processes, 4 or 3 images each of the global batch."""
    assert_same_training(runs[f"single_b{batch_size}"], runs[f"b{batch_size}"])
    assert_rank_zero_alone_wrote(runs[f"b{batch_size}"])


def test_validation_of_processes_sums_their_confusions(runs, data_root, tmp_path):
    """eval.py under two processes sums the processes' confusion matrices: the single-process ones."""
    assert eval_cli.main(eval_args(data_root, runs["b8"] / "last_model.pth", tmp_path / "one.json")) == 0
    one, two = (json.loads(path.read_text()) for path in (tmp_path / "one.json", runs["b8"].parent / "two.json"))
    assert two["confusion"] == one["confusion"] and two["num_images"] == one["num_images"] == 2


def test_two_nodes_through_train_script(runs):
    """train_coco27.sh, torchrun, two machines of two processes: the one-process model of batch 8."""
    assert_same_training(runs["single_b8"], runs["nodes"])
    assert_rank_zero_alone_wrote(runs["nodes"])


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
