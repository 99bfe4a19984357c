"""Run many command lines of the project's scripts fast: each in a process forked from the test's.

Each command line runs in a process of its own, as ``python script argv`` would run it:
``sys.argv`` and ``sys.path[0]`` as Python sets them, the script executed as ``__main__``, stdout
and stderr captured at the file descriptors, and the exit status of ``sys.exit`` (or 1 with a
traceback for an uncaught exception, as Python reports it). The process is forked from the test
process, which has imported torch and the project already: a fresh interpreter for every command
line would import them anew, seconds of CPU each; forked, only the script's own module code runs.
``block`` names packages made unimportable in that process (``sys.modules[name] = None``), to
play a machine without them.
"""

import importlib
import io
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Done:
    code: int  # None: killed after the timeout
    stdout: str
    stderr: str
    seconds: float


def _run_in_child(script, argv, block, out_path, err_path, python_path, cwd=None):
    """In the forked process: run ``script`` as ``__main__`` in ``cwd`` (default the repository); never returns."""

    def prepare():
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(target, fd)
            os.close(target)
        for name in block:
            for loaded in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
                del sys.modules[loaded]
            sys.modules[name] = None
        os.environ.pop("IDDC_DEBUG", None)
        os.chdir(cwd or ROOT)

    exit_as_script(str(script), argv, python_path, prepare)


def exit_as_script(script, argv, python_path, prepare):
    """In a forked process: ``prepare()`` (which gives fds 0-2 the command's streams), then run
    ``script`` as ``python script argv`` would (``sys.argv``, ``sys.path[0]``, exit status) and leave
    the process with its exit status; never returns, whatever fails."""
    code = 1
    try:
        prepare()
        # The test runner's own capture objects would otherwise receive print() and logging.
        sys.stdin = io.TextIOWrapper(os.fdopen(0, "rb", closefd=False))
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
        torch = sys.modules.get("torch")
        if torch is not None:
            # OpenMP's threads are not forked: a parallel region in a child of a process that ran one
            # waits for them forever. One thread runs none (and the commands run side by side anyway).
            torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [script, *argv]
        sys.path[:] = [os.path.dirname(os.path.abspath(script)), *python_path]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as done:
            if done.code is None or isinstance(done.code, int):
                code = done.code or 0
            else:
                print(done.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def script_python_path():
    """``sys.path`` for a forked script: this process's, tests/ apart (the script's folder goes first)."""
    return [path for path in sys.path if Path(path or ".").resolve() != ROOT / "tests"]


def fork_script(script, argv, out_path, err_path, block=(), setup=None, python_path=None, cwd=None):
    """Fork a process that runs ``python script argv`` as described above, in ``cwd`` (default the
    repository), its streams going to ``out_path`` and ``err_path``; ``setup()`` runs first in it (a
    new session, an environment). Returns its pid; the caller waits for it."""
    python_path = script_python_path() if python_path is None else python_path
    for path in (out_path, err_path):
        Path(path).touch()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            if setup is not None:
                setup()
        finally:  # never returns: the child never goes back into the test runner
            _run_in_child(ROOT / script, list(map(str, argv)), block, out_path, err_path, python_path, cwd)
    return pid


def run_command_lines(cases, parallel=None, timeout=120):
    """{key: Done} for ``cases``, {key: (script relative to the repository, argv, block)}, run in
    ``parallel`` processes at a time (default: the CPU count, at least 2)."""
    parallel = parallel or max(2, os.cpu_count() or 1)
    for script in sorted({script for script, _, _ in cases.values()}):
        # Imported here once (as modules: nothing runs), so that no forked process imports its
        # dependencies again; each still executes the script itself anew, as __main__.
        importlib.import_module(Path(script).with_suffix("").as_posix().replace("/", "."))
    python_path = script_python_path()
    workdir = Path(tempfile.mkdtemp(prefix="cli_runner_"))
    waiting, running, results = list(cases.items()), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                key, (script, argv, block) = waiting.pop(0)
                out_path, err_path = workdir / f"{len(waiting)}.out", workdir / f"{len(waiting)}.err"
                pid = fork_script(script, argv, out_path, err_path, block, python_path=python_path)
                running[pid] = (key, out_path, err_path, time.monotonic())
            finished = False
            for pid, (key, out_path, err_path, started) in list(running.items()):
                done_pid, status = os.waitpid(pid, os.WNOHANG)
                if done_pid == 0:  # still running
                    if time.monotonic() - started > timeout:
                        os.kill(pid, signal.SIGKILL)
                    continue
                finished = True
                del running[pid]
                code = os.waitstatus_to_exitcode(status)
                results[key] = Done(
                    code=None if code == -signal.SIGKILL else code,
                    stdout=out_path.read_text(errors="replace"),
                    stderr=err_path.read_text(errors="replace"),
                    seconds=round(time.monotonic() - started, 2),
                )
            if not finished:
                time.sleep(0.01)
    finally:
        for child in running:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return results
