"""Training end to end on a synthetic set with a small ViT: losses, checkpoints, resume, DDP."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_golden_checkpoint, start_command_line

import eval as eval_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=16, num_val=4, sizes=((320, 256), (200, 300), (288, 352), (240, 240)))
    return root


def train_args(data_root, dino_file, output_dir, *extra, num_workers=0):
    """train.py's flags for the tests; ``num_workers=None`` keeps train.py's default (8 workers)."""
    workers = [] if num_workers is None else ["--num-workers", str(num_workers)]
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
        *workers,
        "--device",
        "cpu",
        "--log-every",
        "2",
        *extra,
    ]


def head_weights(path):
    state = torch.load(path, weights_only=True)
    return {f"{part}/{key}": value for part in ("head_nonlinear", "classifier") for key, value in state[part].items()}


def max_weight_difference(path_a, path_b):
    a, b = head_weights(path_a), head_weights(path_b)
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def read_log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_root, dino_file, interrupted_runs):
    """Two uninterrupted epochs with train.py's default loader workers: the reference of the resume
    tests (trained while the interrupted runs run beside it)."""
    out = tmp_path_factory.mktemp("straight")
    assert (
        train_cli.main(train_args(data_root, dino_file, out, "--epochs", "2", "--val-limit", "2", num_workers=None))
        == 0
    )
    return out


def test_two_epochs_end_to_end(tmp_path, data_root, straight_run):
    """The straight run of the resume tests: losses fall, checkpoints load as the original's do, and
    eval.py on the last model gives the last validation's numbers."""
    out = straight_run
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
    eval_args = ["--data-root", str(data_root), "--checkpoint", str(out / "last_model.pth"), "--device", "cpu"]
    eval_args += ["--num-workers", "0", "--protocol", "resize320", "--limit", "2", "--output-json", str(json_out)]
    assert eval_cli.main(eval_args) == 0
    # The same protocol, images and weights as the last validation during training give the same numbers.
    assert json.loads(json_out.read_text())["miou"] == pytest.approx(epochs[1]["miou"])


def test_resume_continues_exactly(tmp_path, data_root, dino_file, straight_run):
    """One epoch, then --resume --epochs 2, with the default workers: bit for bit the straight run."""
    resumed = tmp_path / "resumed"
    assert (
        train_cli.main(train_args(data_root, dino_file, resumed, "--epochs", "1", "--val-limit", "2", num_workers=None))
        == 0
    )
    assert (
        train_cli.main(
            train_args(
                data_root,
                "/nonexistent-not-needed",
                resumed,
                "--epochs",
                "2",
                "--val-limit",
                "2",
                "--resume",
                num_workers=None,
            )
        )
        == 0
    )
    a, b = head_weights(straight_run / "last_model.pth"), head_weights(resumed / "last_model.pth")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [row["epoch"] for row in read_log(resumed) if row["kind"] == "val"] == [0, 1]
    last = torch.load(resumed / "last_model.pth", weights_only=True)
    assert last["epoch"] == 1 and last["step"] == torch.load(straight_run / "last_model.pth", weights_only=True)["step"]


def training_command(data_root, dino_file, output_dir, *extra):
    """train.py with its default loader workers, a resume file every step."""
    return [
        sys.executable,
        "train.py",
        *train_args(
            data_root,
            dino_file,
            output_dir,
            "--epochs",
            "2",
            "--val-limit",
            "2",
            "--checkpoint-every",
            "1",
            *extra,
            num_workers=None,
        ),
    ]


INTERRUPTIONS = ("SIGKILL", "SIGINT")
STOP_AT_STEP = 6  # 4 steps an epoch: step 6 is inside epoch 1


def logged_step(output_dir):
    """The last training step the run has logged (0 before any)."""
    try:
        rows = read_log(output_dir)
    except (OSError, ValueError):  # not written yet, or a line half written
        return 0
    return max((row["step"] for row in rows if row["kind"] == "train"), default=0)


def stop_at_step(started, outcome, timeout=240):
    """In a thread: send each run its signal as soon as it has logged STOP_AT_STEP, and collect how
    it ended: ``outcome[how] = (exit code, stdout, stderr)``, or a text saying what went wrong."""
    running, signalled = dict(started), set()
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        for how, (pid, out, streams) in list(running.items()):
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                texts = [path.read_text(errors="replace") for path in streams]
                del running[how]
                if how not in signalled:
                    outcome[how] = f"ended before step {STOP_AT_STEP}:\n{texts[1][-3000:]}"
                else:
                    outcome[how] = (os.waitstatus_to_exitcode(status), *texts)
            elif how not in signalled and logged_step(out) >= STOP_AT_STEP:
                os.kill(pid, getattr(signal, how))
                signalled.add(how)
        time.sleep(0.02)
    for how, (pid, _, _) in running.items():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        outcome[how] = f"not ended within {timeout} s"


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory, data_root, dino_file):
    """The runs of the interruption tests, each a train.py command line forked from this process (as
    a terminal starts it) and all started at once, before the straight run trains here; a thread
    stops each in the second epoch's middle. Yields a dict that holds how they ended once the thread
    is joined (see ``interrupted``)."""
    started = {}
    for how in INTERRUPTIONS:
        work = tmp_path_factory.mktemp(f"interrupted_{how}")
        streams = (work / "stdout.txt", work / "stderr.txt")
        pid = start_command_line("train.py", training_command(data_root, dino_file, work / "run")[2:], *streams)
        started[how] = (pid, work / "run", streams)
    outcome = {}
    watcher = threading.Thread(target=stop_at_step, args=(started, outcome))
    watcher.start()
    yield watcher, outcome, {how: out for how, (_, out, _) in started.items()}
    watcher.join()


@pytest.fixture(scope="module")
def interrupted(interrupted_runs):
    """{how: (output folder, exit code, stdout, stderr)} of the interrupted runs, once both ended."""
    watcher, outcome, outputs = interrupted_runs
    watcher.join()
    for how in INTERRUPTIONS:
        assert isinstance(outcome.get(how), tuple), outcome.get(how)
    return {how: (outputs[how], *outcome[how]) for how in INTERRUPTIONS}


@pytest.mark.parametrize("how", INTERRUPTIONS)
def test_interrupted_mid_epoch_resumes_where_it_stopped(data_root, straight_run, interrupted, how):
    """Killed (no chance to save) or interrupted (saves, says how to resume) in the second epoch's
    middle; --resume then ends where the straight run does."""
    out, code, output, errors = interrupted[how]
    state = torch.load(out / "resume.pth", weights_only=True)
    assert state["resume_at"]["epoch"] == 1 and 0 < state["resume_at"]["batch"] < 4
    if how == "SIGINT":
        assert code == 130
        last_line = errors.strip().splitlines()[-1]  # on stderr, as every error line
        assert last_line.startswith("error: stopped by SIGINT at epoch 1")
        assert "--resume" in last_line and "resume.pth" in last_line and "Traceback" not in output + errors
    else:
        assert code == -signal.SIGKILL
    # The resumed run in this process: what is tested is the resume file, not a fresh interpreter.
    assert train_cli.main(training_command(data_root, "/nonexistent-not-needed", out, "--resume")[2:]) == 0
    assert max_weight_difference(straight_run / "last_model.pth", out / "last_model.pth") <= 1e-6
    assert [row["epoch"] for row in read_log(out) if row["kind"] == "val"] == [0, 1]


def test_bad_batch_and_data(tmp_path, data_root, dino_file, capsys):
    assert train_cli.main(train_args(data_root, dino_file, tmp_path / "r", "--batch-size", "1")) == 2
    assert "--batch-size 1" in capsys.readouterr().err
    assert train_cli.main(train_args(data_root, dino_file, tmp_path / "r", "--batch-size", "64")) == 2
    assert "--batch-size 64: the training split has only 16" in capsys.readouterr().err
    assert train_cli.main(train_args(tmp_path / "none", dino_file, tmp_path / "r")) == 2
    assert "no such folder" in capsys.readouterr().err


def test_full_size_vits16_checkpoint_has_released_keys(tmp_path, data_root, golden_dir):
    dino = make_golden_checkpoint(tmp_path / "dino_vits16.pth", "--dino")
    out = tmp_path / "run"
    assert (
        train_cli.main(
            [
                "--data-root",
                str(data_root),
                "--backbone-weights",
                str(dino),
                "--output-dir",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--train-limit",
                "2",
                "--val-limit",
                "1",
                "--num-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    fingerprint = json.loads((golden_dir / "checkpoint_fingerprint.json").read_text())["tensors"]
    state = torch.load(out / "last_model.pth", weights_only=True)
    ours = {
        f"{part}/{key}": list(value.shape)
        for part in ("backbone", "head_nonlinear", "classifier")
        for key, value in state[part].items()
    }
    assert ours == {key: value["shape"] for key, value in fingerprint.items()}


def test_negative_shifts_are_seeded_and_in_range():
    from engine.training import negative_shifts

    draws = np.array([negative_shifts(1, step, 16, 3) for step in range(300)])
    assert draws.shape == (300, 3)
    assert set(draws.flat) == set(range(1, 15))  # every shift of the original's randint(1, B - 1), no other
    assert negative_shifts(1, 5, 16, 3) == negative_shifts(1, 5, 16, 3) != negative_shifts(2, 5, 16, 3)
    assert negative_shifts(0, 0, 2, 4) == [1, 1, 1, 1]
