"""What a shared machine does to runs (docs/troubleshooting.md): one writer per run folder, a full
disk, a backbone file with a block too few or too many, hostile pickles and YAML, and val.sh."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import fork_script
from forked_python import run_script as run_bash
from helpers import fill, save_dino, save_released, small_disk, small_model, wait_exit
from reference_vit import release_state

import baseline_kmeans
import eval as eval_cli
import predict as predict_cli
import train as train_cli
from data.registry import DATASET_NAMES, get_dataset
from data.synthetic import write_synthetic_cocostuff
from engine.tensorboard import TensorboardLog
from modules.backbones import ARCHITECTURE_KEY, release_cache_path
from modules.checkpoint import load_iddc_model
from modules.weights import load_file
from scripts import summarize
from utils.errors import DiskFullError
from utils.lock import LOCK_FILE, folder_lock
from utils.log import JsonlLog, setup_logger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    write_synthetic_cocostuff(work / "data", num_train=4, num_val=1, sizes=((224, 224),))
    save_dino(small_model(seed=3, depth=1), work / "dino.pth")
    save_released(small_model(seed=5, depth=1), work / "model.pth")
    return work


def train_flags(work, output_dir, *extra):
    return [
        *("--data-root", work / "data", "--backbone-weights", work / "dino.pth", "--output-dir", output_dir),
        *("--batch-size", "2", "--epochs", "1", "--device", "cpu", "--num-workers", "0", "--val-limit", "1"),
        *extra,
    ]


def run(module, argv):
    """An entry point's ``main`` on ``argv`` (paths included), as the command line gives it."""
    return module.main([str(arg) for arg in argv])


def last_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- one writer per run folder


def test_two_runs_at_once_and_a_resume_while_one_trains(work, tmp_path, capsys):
    """Two train.py started at once on one folder: one trains, the other is refused naming its pid
    and host; a --resume while it trains is refused too, and the run finishes unharmed."""
    out, go = tmp_path / "run", tmp_path / "go"

    def pause_at_the_first_resume_file():  # in the runs: hold the folder until the test says go
        import engine.trainer

        real = engine.trainer.save_atomic

        def save_then_wait(obj, path):
            real(obj, path)
            while Path(path).name == "resume.pth" and not go.exists():
                time.sleep(0.02)

        engine.trainer.save_atomic = save_then_wait

    argv = train_flags(work, out, "--checkpoint-every", "1")
    logs = {index: (tmp_path / f"{index}.out", tmp_path / f"{index}.err") for index in (0, 1)}
    pids = [fork_script("train.py", argv, *logs[index], setup=pause_at_the_first_resume_file) for index in (0, 1)]
    host = socket.gethostname()
    try:
        deadline, ended = time.monotonic() + 60, {}
        while not ended and time.monotonic() < deadline:
            for pid in pids:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    ended[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        assert list(ended.values()) == [2]  # the other one holds the folder and waits
        loser = pids.index(next(iter(ended)))
        winner = pids[1 - loser]
        refusal = logs[loser][1].read_text().strip().splitlines()[-1]
        expected = f"error: --output-dir {out}: another process is writing there (pid {winner} host {host})"
        assert refusal.startswith(expected), refusal
        while not (out / "resume.pth").is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
        capsys.readouterr()
        assert run(train_cli, [*argv, "--resume"]) == 2
        assert last_line(capsys).startswith(expected)
    finally:
        go.touch()
        codes = [wait_exit(pid, time.monotonic() + 60) for pid in pids if pid not in ended]
    assert codes == [0], logs[1 - loser][1].read_text()[-2000:]
    for name in ("best_model.pth", "last_model.pth"):
        assert load_iddc_model(out / name)[0].vit.depth == 1
    assert load_file(out / "resume.pth")["step"] == 2  # the end of the epoch


def test_a_killed_holder_leaves_the_folder_free(work, tmp_path, capsys):
    out = tmp_path / "run"
    holder = os.fork()
    if holder == 0:  # pragma: no cover  (the child)
        with folder_lock(out, "--output-dir"):
            os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    os.waitpid(holder, os.WUNTRACED)  # it holds the lock now
    capsys.readouterr()
    images = work / "data/images/val2017"
    argv = ["--checkpoint", work / "model.pth", "--input", images, "--output-dir", out, "--device", "cpu"]
    assert run(predict_cli, argv) == 2
    assert f"another process is writing there (pid {holder} host" in last_line(capsys)
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    assert run(predict_cli, argv) == 0
    assert len(list(out.glob("*_overlay.png"))) == 1 and not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- a full disk


def test_runs_that_the_disk_cannot_hold_are_refused_before_training(work, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "1m") as disk:
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({"variants": [{"name": "a"}]}))
        for extra, what in (([], "the run writes up to"), (["--sweep", sweep], "the sweep writes up to")):
            capsys.readouterr()
            assert run(train_cli, train_flags(work, disk / "run", *extra)) == 1
            line = last_line(capsys)
            assert line.startswith(f"error: --output-dir {disk / 'run'}: {what}") and "MB free" in line
            assert list(disk.iterdir()) == []


def test_a_checkpoint_write_on_a_full_disk(work, tmp_path):
    """The disk fills before the end of the epoch's resume.pth: one line naming it, exit 1; the
    resume file of step 1 and the checkpoints still load; no temporary file is left behind."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk / "run"

        def fill_before_the_second_epochs_checkpoint():
            import engine.trainer

            real, calls = engine.trainer.save_atomic, []

            def save(obj, path):
                calls.append(path)
                if len(calls) == 4:  # resume.pth of step 1, then best and last at the epoch's end
                    fill(disk)
                real(obj, path)

            engine.trainer.save_atomic = save

        pid = fork_script(
            "train.py",
            train_flags(work, out, "--checkpoint-every", "1"),
            tmp_path / "out",
            tmp_path / "err",
            setup=fill_before_the_second_epochs_checkpoint,
        )
        assert wait_exit(pid, time.monotonic() + 60) == 1
        err = (tmp_path / "err").read_text()
        assert "Traceback" not in err and "Logging error" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error: {out / 'resume.pth'}: cannot write it, the disk is full (0.0 MB free"), line
        (disk / "filler").unlink()
        for name in ("best_model.pth", "last_model.pth"):
            assert load_iddc_model(out / name)[0].vit.depth == 1
        assert load_file(out / "resume.pth")["step"] == 1  # the previous one, whole
        assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


def test_eval_predict_and_logs_on_a_full_disk(work, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "1m") as disk:
        (disk / "earlier.json").write_text('{"miou": 1}')
        (disk / "log.jsonl").write_text('{"step": 1}\n')
        fill(disk)
        capsys.readouterr()
        common = ["--checkpoint", work / "model.pth", "--device", "cpu"]
        json_out = disk / "earlier.json"
        assert (
            run(eval_cli, [*common, "--data-root", work / "data", "--num-workers", "0", "--output-json", json_out]) == 1
        )
        assert last_line(capsys).startswith(f"error: {json_out}: cannot write it, the disk is full (0.0 MB free")
        assert json.loads(json_out.read_text()) == {"miou": 1}
        assert "results written" not in capsys.readouterr().out
        images = work / "data/images/val2017"
        assert run(predict_cli, [*common, "--input", images, "--output-dir", disk / "pngs"]) == 1
        line = last_line(capsys)
        assert line.startswith(f"error: {disk / 'pngs'}/") and ": cannot write it, the disk is full" in line
        assert not list(disk.glob("pngs/*.png"))

        with pytest.raises(DiskFullError, match="the disk is full") as caught:
            JsonlLog(disk / "log.jsonl").write(step=2, loss=float("nan"), note="x" * 10000)
        assert caught.value.exit_code == 1
        assert (disk / "log.jsonl").read_text() == '{"step": 1}\n'  # no half line
        logger = setup_logger("iddc.faults", log_file=disk / "train.log")
        with pytest.raises(DiskFullError, match=f"{disk / 'train.log'}: cannot write it, the disk is full"):
            logger.info("x" * 100000)
        assert "Logging error" not in capsys.readouterr().err
        logger.handlers.clear()
        with pytest.raises(DiskFullError, match=f"{disk / 'tensorboard'}: cannot write it, the disk is full"):
            board = TensorboardLog(disk / "tensorboard")
            for step in range(100):
                board.write("train", step=step, loss=1.0, per_class={str(k): 0.5 for k in range(200)})
        assert "Traceback" not in capsys.readouterr().err  # TensorBoard's writer thread stays quiet


# ---------------------------------------------------------------- a backbone file is whole


def test_a_release_file_missing_a_block_or_with_one_too_many(work, tmp_path, capsys):
    whole = release_state("dino_vits16")
    short = {key: value for key, value in whole.items() if not key.startswith("blocks.11.")}
    long = whole | {
        key.replace("blocks.0.", "blocks.12."): value for key, value in whole.items() if key.startswith("blocks.0.")
    }
    for state, found in ((short, "missing blocks.11;"), (long, "extra blocks.12;")):
        torch.save(state, tmp_path / "dino.pth")
        argv = [*train_flags(work, tmp_path / "run"), "--backbone-weights", tmp_path / "dino.pth"]
        capsys.readouterr()
        assert run(train_cli, argv) == 2
        line = last_line(capsys)
        assert f"transformer blocks, not the 12 of the DINO ViT-S/16 release: {found}" in line, line
        assert not (tmp_path / "run").exists()
    released = torch.load(work / "model.pth")
    del released[ARCHITECTURE_KEY]  # as the authors' files: no record, so the release's size is due
    torch.save(released, tmp_path / "released.pth")
    assert run(eval_cli, ["--checkpoint", tmp_path / "released.pth", "--data-root", work / "data"]) == 2
    assert "holds a ViT 64 wide, not the DINO ViT-S/16 release (384 wide)" in last_line(capsys)


# ---------------------------------------------------------------- hostile files


class Payload:
    """Unpickled by a full unpickler, it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_hostile_pickles_and_yaml_run_nothing(work, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    pickle_file = tmp_path / "hostile.pth"
    torch.save({"backbone": Payload(marker), "head_nonlinear": {}, "classifier": {}}, pickle_file)
    hostile_yaml = tmp_path / "hostile.yaml"
    hostile_yaml.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    not_yaml = tmp_path / "binary.yaml"
    not_yaml.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    resume_dir = tmp_path / "resumed"
    resume_dir.mkdir()
    (resume_dir / "resume.pth").write_bytes(pickle_file.read_bytes())
    summarized = tmp_path / "summarized"
    summarized.mkdir()
    (summarized / "log.jsonl").write_text('{"kind": "val", "epoch": 0}\n')
    (summarized / "config.yaml").write_bytes(hostile_yaml.read_bytes())
    hub = tmp_path / "hub"  # the torch hub cache, where a release file is looked up without --backbone-weights
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cached = release_cache_path("dino_vits16")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pickle_file.read_bytes())
    no_weights = train_flags(work, tmp_path / "run")
    at = no_weights.index("--backbone-weights")
    del no_weights[at : at + 2]
    data = ["--data-root", work / "data"]
    cases = [
        (train_cli, no_weights, str(cached)),
        (baseline_kmeans, [*data, "--backbone-weights", pickle_file, "--device", "cpu"], str(pickle_file)),
        (baseline_kmeans, [*data, "--config", hostile_yaml], f"--config {hostile_yaml}: holds a YAML tag"),
        (eval_cli, [*data, "--checkpoint", pickle_file], str(pickle_file)),
        (
            predict_cli,
            ["--checkpoint", pickle_file, "--input", work / "data/images/val2017", "--output-dir", tmp_path / "p"],
            str(pickle_file),
        ),
        (train_cli, [*train_flags(work, tmp_path / "run"), "--backbone-weights", pickle_file], str(pickle_file)),
        (train_cli, [*train_flags(work, resume_dir), "--resume"], str(resume_dir / "resume.pth")),
        (
            train_cli,
            [*train_flags(work, tmp_path / "run"), "--config", hostile_yaml],
            f"--config {hostile_yaml}: holds a YAML tag",
        ),
        (eval_cli, [*data, "--checkpoint", work / "model.pth", "--config", hostile_yaml], f"--config {hostile_yaml}"),
        (
            eval_cli,
            [*data, "--checkpoint", work / "model.pth", "--config", not_yaml],
            f"--config {not_yaml}: not a YAML file",
        ),
        (
            train_cli,
            [*train_flags(work, tmp_path / "run"), "--sweep", hostile_yaml],
            f"--sweep {hostile_yaml}: holds a YAML tag",
        ),
        (summarize, [summarized], f"{summarized / 'config.yaml'}: holds a YAML tag"),
    ]
    for module, argv, culprit in cases:
        capsys.readouterr()
        assert run(module, argv) in (1, 2)
        line = last_line(capsys)
        assert line.startswith("error: ") and culprit in line, line
    assert not marker.exists()


# ---------------------------------------------------------------- val.sh


def test_val_script_evaluates_the_file_it_is_given(work, tmp_path):
    released_name = tmp_path / "ckpts" / "cocostuff27_vits16.pth"
    released_name.parent.mkdir()
    released_name.write_bytes(b"not the file to evaluate")
    previous = tmp_path / "outputs" / "val_cocostuff27_vits16_sliding.json"
    previous.parent.mkdir()
    previous.write_text("{}")
    env = dict(os.environ, DATA_ROOT=str(work / "data"), CHECKPOINT_DIR=str(released_name.parent))
    flags = ["--device", "cpu", "--num-workers", "0", "--checkpoint", str(work / "model.pth")]
    done = run_bash(["bash", str(ROOT / "val_coco27.sh"), "vits16", *flags], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"val.sh: evaluating {work / 'model.pth'}" in done.stdout
    assert "it replaces the results that file held" in done.stdout
    assert json.loads(previous.read_text())["checkpoint"] == str(work / "model.pth")

    for dataset in DATASET_NAMES:  # the name val.sh gives the results takes the dataset's default protocol
        said = subprocess.run(
            ["bash", "-c", f"source scripts/common.sh; default_protocol {dataset}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert said.stdout.strip() == get_dataset(dataset).default_protocol
    done = run_bash(["bash", str(ROOT / "val.sh"), "potsdam3", "vits8"], env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(
        "error: no released checkpoint exists for potsdam3 vits8: pass --checkpoint FILE"
    )
