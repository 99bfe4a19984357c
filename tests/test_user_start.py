"""Every command started as a user starts it: a fresh interpreter, a working folder outside the
project, a user's environment (no PYTHONPATH).

The other tests fork their commands from the test process (tests/cli_runner.py), which has the
project on ``sys.path`` and imported already: a command that could not import the project when
started as a file would pass there. Here one fresh interpreter (tests/fresh_interpreter.py) starts
each command's ``--help`` anew, its ``sys.path`` exactly what ``python path/to/script.py`` gives and
no module of the project imported, so deleting the ``sys.path`` line of any script fails its case.
The shell scripts run in bash with a recording ``PYTHON`` (train.sh with ``NPROC=2``, so through its
torchrun launcher), and the command line each would start is started the same way.
test_distributed_training.py launches train_coco27.sh through torchrun for real in a user's
environment.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_released, small_model, user_env

ROOT = Path(__file__).resolve().parents[1]


def commands_in(pattern):
    """The files of ``pattern`` that are commands (they run as ``__main__``), relative to the project."""
    paths = sorted(ROOT.glob(pattern))
    return [str(path.relative_to(ROOT)) for path in paths if 'if __name__ == "__main__":' in path.read_text()]


# Found anew in every run, so that a new command (scripts/gallery.py, app.py, ...) is covered at once.
PYTHON_COMMANDS = [*commands_in("*.py"), *commands_in("scripts/*.py"), *commands_in("benchmarks/bench_*.py")]
# (script, arguments, environment): the torchrun path of the training scripts, and the evaluation ones.
SHELL_COMMANDS = [
    ("train.sh", ["cocostuff27", "vits16"], {"NPROC": "2"}),
    ("train_coco27.sh", ["vits8"], {"NPROC": "2"}),
    ("val.sh", ["cocostuff27", "vits16"], {}),
    ("val_coco27.sh", ["vits8"], {}),
]
RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$PWD" "$@" > "$RECORD_FILE"
"""


def shell_key(script, args, env):
    return " ".join([*(f"{name}={value}" for name, value in env.items()), "bash", script, *args])


def recorded_command_line(work, script, args, env):
    """(cwd, argv of the interpreter) that `bash SCRIPT ARGS --help` starts, run in a user's environment."""
    recorder = work / "python"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    record = work / "record.txt"
    record.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(ROOT / script), *args, "--help"],
        cwd=work,
        env=user_env(
            PYTHON=str(recorder),
            RECORD_FILE=str(record),
            DATA_ROOT=str(work / "data"),
            CHECKPOINT_DIR=str(work / "checkpoints"),
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and record.exists(), f"bash {script}: exit {done.returncode}: {done.stderr}"
    cwd, *argv = record.read_text().splitlines()
    return cwd, argv


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """{key: result} of every command started in one fresh interpreter, and {key: launcher argv}."""
    work = tmp_path_factory.mktemp("user")
    (work / "checkpoints").mkdir()
    for arch in ("vits16", "vits8"):
        (work / "checkpoints" / f"cocostuff27_{arch}.pth").touch()  # val.sh looks for it; --help reads none
    checkpoint = save_released(small_model(), work / "mine.pth")
    commands = [
        {"key": f"python {name}", "script": str(ROOT / name), "argv": ["--help"], "cwd": str(work)}
        for name in PYTHON_COMMANDS
    ]
    launchers = {}
    for script, args, env in SHELL_COMMANDS:
        cwd, argv = recorded_command_line(work, script, args, env)
        position = next(i for i, word in enumerate(argv) if word.endswith(".py"))
        key = shell_key(script, args, env)
        launchers[key] = argv[:position]
        commands.append({"key": key, "script": argv[position], "argv": argv[position + 1 :], "cwd": cwd})
    plan = {"commands": commands, "hub": {"repo": str(ROOT), "checkpoint": str(checkpoint), "cwd": str(work)}}
    (work / "plan.json").write_text(json.dumps(plan))
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fresh_interpreter.py"), "plan.json", "results.json"],
        cwd=work,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((work / "results.json").read_text()), launchers


@pytest.mark.parametrize(
    "key", [f"python {name}" for name in PYTHON_COMMANDS] + [shell_key(*command) for command in SHELL_COMMANDS]
)
def test_every_command_starts_from_another_folder_in_a_fresh_interpreter(started, key):
    result = started[0][key]
    assert result["code"] == 0 and "usage:" in result["stdout"], (
        f"{key} --help: exit {result['code']}\n{result['stderr']}"
    )
    assert "Traceback" not in result["stderr"], result["stderr"]


def test_the_training_scripts_start_train_py_through_torchrun(started):
    for script, args, env in SHELL_COMMANDS:
        launcher = started[1][shell_key(script, args, env)]
        if "NPROC" in env:
            assert launcher[-5:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", env["NPROC"]]
        else:
            assert launcher == [], f"{script} starts its command through {launcher}"


def test_torch_hub_loads_a_checkpoint_from_the_project_folder(started):
    result = started[0]["torch.hub.load"]
    assert result["code"] == 0, result["stderr"]
    assert json.loads(result["stdout"].splitlines()[-1]) == [1, 27, 2, 2]


def test_every_command_is_covered():
    expected = {"train.py", "eval.py", "predict.py", "demo.py", "baseline_kmeans.py", "scripts/summarize.py"}
    assert expected <= set(PYTHON_COMMANDS)
    assert len([name for name in PYTHON_COMMANDS if name.startswith("benchmarks/")]) >= 6
