"""Start the project's commands as a user does, one after another in this one fresh interpreter.

    python tests/fresh_interpreter.py PLAN.json RESULTS.json     # from a folder outside the project

The forked runners of the other tests (tests/cli_runner.py) inherit the test process's imported
modules and ``sys.path``, so a command that lacks the ``sys.path`` line it needs when started as a
file would still pass there. Here every command starts from nothing of the project: before each
one, every module of the project is dropped from ``sys.modules`` and ``sys.path`` becomes exactly
what ``python path/to/script.py`` gives (the script's folder, then the interpreter's own paths;
no project root unless the script adds it), in the working folder the plan names. Only the
third-party packages (torch, timm, ...) stay imported, once for all commands: importing torch
costs seconds of CPU in every new interpreter.

PLAN.json: {"commands": [{"key", "script", "argv", "cwd"}], "hub": {"repo", "checkpoint", "cwd"}}.
"hub" loads a checkpoint with ``torch.hub.load(repo, "iddc_checkpoint", source="local")`` as a user's
``python -c`` would, and runs it on one image. RESULTS.json: {key: {"code", "stdout", "stderr"}}.
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

import scipy.optimize  # noqa: F401  the third-party packages the commands import, imported once
import timm  # noqa: F401
import torch
import yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
# What `python script.py` puts after the script's folder: the interpreter's own paths (this file's
# folder, sys.path[0], is dropped; PYTHONPATH is not set by the test).
INTERPRETER_PATH = list(sys.path[1:])
# The project's top-level modules and packages, whether or not they are files (namespace packages).
PROJECT_NAMES = {path.stem for path in ROOT.glob("*.py")} | {
    path.name for path in ROOT.iterdir() if path.is_dir() and any(path.glob("*.py"))
}


def forget_the_project():
    """Drop every module of the project from sys.modules, so that the next command imports it anew."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name == "__main__":  # this file, which runs the commands
            continue
        if name.split(".")[0] in PROJECT_NAMES or (file and Path(file).resolve().is_relative_to(ROOT)):
            del sys.modules[name]


def start(run, cwd, path_head):
    """{"code", "stdout", "stderr"} of ``run()`` started as a user starts a command."""
    forget_the_project()
    os.chdir(cwd)
    sys.path[:] = [path_head, *INTERPRETER_PATH]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            run()
        except SystemExit as done:
            if done.code is None or isinstance(done.code, int):
                code = done.code or 0
            else:
                print(done.code, file=sys.stderr)
                code = 1
        except BaseException:  # reported as the interpreter would, with its traceback
            traceback.print_exc()
            code = 1
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def run_script(script, argv):
    def run():
        sys.argv = [script, *argv]
        runpy.run_path(script, run_name="__main__")

    return run


def load_through_hub(repo, checkpoint):
    def run():
        model = torch.hub.load(repo, "iddc_checkpoint", source="local", path=checkpoint)
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, 32, 32))[2]  # (1, K, 2, 2)
        print(json.dumps(list(logits.shape)))

    return run


if __name__ == "__main__":
    # Resolved now: each command changes the working folder and sys.argv.
    plan_file, results_file = (Path(name).resolve() for name in sys.argv[1:3])
    plan = json.loads(plan_file.read_text())
    results = {}
    for command in plan["commands"]:
        script = os.path.realpath(command["script"])
        results[command["key"]] = start(run_script(script, command["argv"]), command["cwd"], os.path.dirname(script))
    hub = plan.get("hub")
    if hub:
        results["torch.hub.load"] = start(load_through_hub(hub["repo"], hub["checkpoint"]), hub["cwd"], "")
    results_file.write_text(json.dumps(results))
