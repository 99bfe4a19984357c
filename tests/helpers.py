"""Builders shared by the tests: small random IDDC models saved in the official formats, the
golden fake checkpoints; a command line started in a process group of its own; the ranks of a
process group forked from the test's; a user's environment."""

import contextlib
import functools
import io
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import ROOT, fork_script

from modules.backbones import with_architecture_record
from modules.checkpoint import iddc_state
from modules.model import IDDCModel
from modules.vit import VisionTransformer


def small_model(patch_size=16, embed_dim=64, depth=2, num_classes=27, seed=0):
    """A randomly initialised IDDC model with a small ViT (64 channels a head, as DINO's)."""
    torch.manual_seed(seed)
    vit = VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64))
    model = IDDCModel(vit, num_classes=num_classes)
    with torch.no_grad():
        # Larger classifier weights so that random models use several clusters.
        model.classifier.weight.mul_(20)
    return model.eval()


def save_released(model, path, **extra):
    """Save in the released layout (backbone keys prefixed 'model.')."""
    torch.save(iddc_state(model, **extra), path)
    return path


def save_dino(model, path):
    """Save the backbone as a DINO release file (plain ViT state_dict) of a reduced model, which
    records its depth and width (modules/backbones.py ARCHITECTURE_KEY)."""
    torch.save(with_architecture_record(model.vit), path)
    return path


def make_golden_checkpoint(out, *flags):
    """tests/golden/make_checkpoint.py --seed 4321 FLAGS --out OUT (the original's fake ViT-S
    checkpoint, or with --dino its DINO file), run as __main__ in this process: it only draws
    numpy numbers and saves them, so a new interpreter would only add its imports."""
    saved_argv = sys.argv
    sys.argv = ["make_checkpoint.py", "--seed", "4321", *map(str, flags), "--out", str(out)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(ROOT / "tests" / "golden" / "make_checkpoint.py"), run_name="__main__")
    finally:
        sys.argv = saved_argv
    return Path(out)


def start_command_line(script, argv, out_path, err_path):
    """Start ``python script argv`` forked from the test process (tests/cli_runner.py's way), as the
    leader of a new session and process group, as a terminal starts a command; returns its pid.

    For the tests that signal the whole group while it runs: the caller waits for the pid
    (``os.waitpid``) and reads its output from ``out_path`` and ``err_path``.
    """
    return fork_script(script, argv, out_path, err_path, setup=os.setsid)


def user_env(**extra):
    """The environment a user starts a command in: this one without what the test runner or a
    developer's shell adds to Python's imports (PYTHONPATH, pytest's variables), plus ``extra``."""
    dropped = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "IDDC_DEBUG")
    env = {name: value for name, value in os.environ.items() if name not in dropped and not name.startswith("PYTEST")}
    return {**env, **extra}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(commands, world_size, log_dir):
    """Start the ``world_size`` ranks of a process group, each forked from the test process and
    running ``commands`` ([(script, argv)], train.py or eval.py) in a row with torchrun's
    environment (tests/command_ranks.py): no launcher, no new interpreter. {pid: (stdout, stderr) files}."""
    plan = json.dumps([[free_port(), script, list(map(str, argv))] for script, argv in commands])
    pids = {}
    for rank in range(world_size):
        out, err = Path(log_dir) / f"rank{rank}.out", Path(log_dir) / f"rank{rank}.err"
        ranks = dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world_size, MASTER_ADDR="127.0.0.1")
        environment = {key: str(value) for key, value in ranks.items()}
        setup = functools.partial(os.environ.update, environment)
        pid = fork_script("tests/command_ranks.py", [plan], out, err, setup=setup)
        pids[pid] = (out, err)
    return pids


def wait_exit(pid, deadline):
    """The exit code of the forked process ``pid`` (minus the signal that killed it), or None if it
    had not ended by ``deadline`` (time.monotonic()); it is then killed, so that nothing outlives
    the test."""
    while not (ended := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(ended[1])


def finish_ranks(pids, timeout=300):
    """Wait for the ranks of :func:`start_ranks`; each must exit 0 (else: its output)."""
    deadline = time.monotonic() + timeout
    for pid, (out, err) in pids.items():
        code = wait_exit(pid, deadline)
        output = out.read_text()[-2000:] + err.read_text()[-3000:]
        assert code == 0, f"{out} (exit {code}; None: still running after {timeout} s):\n{output}"


@contextlib.contextmanager
def small_disk(path, size="2m"):
    """A tmpfs of ``size`` at ``path`` (root can mount one, here and in CI); skipped where it cannot."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs to fill: no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk):
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "ab", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
