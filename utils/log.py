"""Logging set-up, the git commit of the code, and logs of every logged value (JSON lines, TensorBoard)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from utils import distributed
from utils.errors import OutputError
from utils.files import disk_full_error, is_disk_full, reporting_disk_full, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


def setup_logger(name="iddc", log_file=None):
    """Readable lines on stdout (rank 0 only) and, when given, in ``log_file``."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if log_file is not None and distributed.is_main():
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = RunLogFileHandler(log_file)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


class RunLogFileHandler(logging.FileHandler):
    """A log file whose failed write stops the command with one line (a full disk names the file
    and the free space) instead of logging's own "--- Logging error ---" traceback, after which the
    run would go on without its log."""

    def handleError(self, record):
        err = sys.exc_info()[1]
        if is_disk_full(err):
            raise disk_full_error(self.baseFilename) from err
        if isinstance(err, OSError):
            raise OutputError(f"{self.baseFilename}: cannot write the log ({err.strerror or err})") from err
        super().handleError(record)


def git_commit():
    """The commit of the code that ran, with '+dirty' when there are uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class JsonlLog:
    """Appends one JSON object per call; only rank 0 writes."""

    def __init__(self, path):
        self.path = Path(path)

    def write(self, **values):
        if not distributed.is_main():
            return
        line = (json.dumps(values, default=float) + "\n").encode()
        with reporting_disk_full(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab", buffering=0) as f:
                kept = f.seek(0, os.SEEK_END)
                try:
                    written = 0
                    while written < len(line):  # an unbuffered write may take part of it
                        written += f.write(line[written:])
                except OSError:  # no half line: the rows before it stay readable
                    os.ftruncate(f.fileno(), kept)
                    raise

    def drop_after(self, step):
        """Forget the rows of work beyond ``step`` (a resumed run redoes it): train and val rows of
        later steps, and the final evaluation. Rewritten atomically; rank 0 only."""
        if not distributed.is_main() or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", float("inf")) <= step
        ]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))


class LogGroup:
    """Several logs fed by one ``write(**values)`` call (e.g. log.jsonl and TensorBoard)."""

    def __init__(self, *logs):
        self.logs = logs

    def write(self, **values):
        for log in self.logs:
            log.write(**values)
