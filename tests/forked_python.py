"""Run a bash script of the project as a user runs it, its Python command lines forked from the test process.

The script (val_coco27.sh, train.sh, scripts/gpu_check.sh, ...) runs in bash with the environment,
working folder and arguments it is given. Its ``python``/``python3`` is a stand-in put first on its
PATH: for ``python SCRIPT.py ARGS`` the stand-in hands the command line, its working folder, its
environment and its standard streams (the file descriptors themselves) to the test process, which
runs it in a process forked from itself, as ``python SCRIPT.py ARGS`` would run it (the script as
``__main__``, its own ``sys.argv``, ``sys.path[0]`` and exit status: tests/cli_runner.py's way), and
hands the exit status back; the stand-in exits with it. A fresh interpreter would import torch and
the project anew, seconds of CPU for each command line. Any other use of the interpreter (``-m``,
``-c``) goes to the real one. ``PYTHON`` is removed from the script's environment, so that the
launchers' ``${PYTHON:-python}`` is the stand-in.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_runner import exit_as_script

ROOT = Path(__file__).resolve().parents[1]


def _stand_in(python, address):
    return f"""#!{python} -IS
import json, os, signal, socket, sys

args = sys.argv[1:]
if not args or args[0].startswith("-") or not args[0].endswith(".py"):
    os.execv({python!r}, [{python!r}, *args])
streams = []
for fd in (0, 1, 2):
    try:
        os.fstat(fd)
        streams.append(fd)
    except OSError:  # closed: the command gets /dev/null instead
        streams.append(os.open(os.devnull, os.O_RDWR))
request = json.dumps({{"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
with socket.socket(socket.AF_UNIX) as server:
    server.connect({str(address)!r})
    socket.send_fds(server, [len(request).to_bytes(8, "big")], streams)
    server.sendall(request)
    reply = b""
    while not reply.endswith(b"\\n"):  # one line; other forked commands may hold the connection open
        chunk = server.recv(64)
        if not chunk:
            sys.exit("forked_python: the test process hung up")
        reply += chunk
code = int(reply)
if code < 0:  # killed by a signal: so is the stand-in
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def _receive_exactly(connection, size):
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the stand-in hung up mid-request")
        data += chunk
    return data


def _run_in_child(request, streams, python_path):
    """In the forked process: run the requested ``python SCRIPT.py ARGS``; never returns."""

    def prepare():
        for target, fd in enumerate(streams):
            os.dup2(fd, target)
        for fd in streams:
            if fd > 2:
                os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])

    exit_as_script(request["argv"][0], request["argv"][1:], python_path, prepare)


def _start(connection, python_path):
    """Read one request of a stand-in from ``connection`` and fork its command; the child's pid."""
    header, streams, _, _ = socket.recv_fds(connection, 8, 3)
    header += _receive_exactly(connection, 8 - len(header))
    request = json.loads(_receive_exactly(connection, int.from_bytes(header, "big")))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        connection.close()
        _run_in_child(request, streams, python_path)
    for fd in streams:
        os.close(fd)
    return pid


def run_script(command, env=None, cwd=None, timeout=300):
    """``subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)`` for a bash
    command line whose Python command lines are forked from this process (see the module)."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTHON", None)
    python_path = [path for path in sys.path if Path(path or ".").resolve() != ROOT / "tests"]
    with tempfile.TemporaryDirectory(prefix="forked_python_") as folder:
        folder = Path(folder)
        address = folder / "socket"
        stand_ins = folder / "bin"
        stand_ins.mkdir()
        for name in ("python", "python3"):
            (stand_ins / name).write_text(_stand_in(sys.executable, address))
            (stand_ins / name).chmod(0o755)
        env["PATH"] = f"{stand_ins}{os.pathsep}{env.get('PATH', os.defpath)}"
        served = {}  # pid of a forked command -> the connection of its stand-in
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(address))
            listener.listen()
            with open(folder / "stdout", "w+b") as stdout, open(folder / "stderr", "w+b") as stderr:
                process = subprocess.Popen(
                    command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
                )
                deadline = time.monotonic() + timeout
                try:
                    while process.poll() is None or served:
                        if time.monotonic() > deadline:
                            raise subprocess.TimeoutExpired(command, timeout)
                        if select.select([listener], [], [], 0.01)[0]:
                            connection, _ = listener.accept()
                            served[_start(connection, python_path)] = connection
                        for pid, connection in list(served.items()):
                            ended, status = os.waitpid(pid, os.WNOHANG)
                            if ended:
                                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                                connection.close()
                                del served[pid]
                finally:
                    for pid, connection in served.items():
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        connection.close()
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                stdout.seek(0)
                stderr.seek(0)
                return subprocess.CompletedProcess(
                    command,
                    process.returncode,
                    stdout.read().decode(errors="replace"),
                    stderr.read().decode(errors="replace"),
                )
