"""One writer per output folder: an OS lock on a file in it, held while a command writes there.

    from utils.lock import folder_lock, hold_folder_lock
    with folder_lock(output_dir, "--output-dir"):
        ...  # write in output_dir
    hold_folder_lock(output_dir, "--output-dir")  # in an entry point's main: until main ends

A second command that would write in the same folder (a second run started at the same moment, a
``--resume`` while the first still trains) is refused with one line naming the folder and the pid
and host of the holder, which the lock file records. The lock belongs to the process: the operating
system releases it when the process ends, killed or crashed included, so a stale lock never needs
removing. It is a POSIX record lock (``fcntl.lockf``), not ``flock``: processes forked by the holder
(DataLoader workers, CRF pools) do not inherit it, so it is free the moment the holder dies, even
while its workers take a few seconds more to notice. Under torchrun only rank 0 writes, so only
rank 0 locks. Where the file system refuses locks (ENOLCK, some NFS mounts) one warning is printed
and the command goes on unlocked.
"""

import contextlib
import errno
import fcntl
import os
import socket
import sys
from pathlib import Path

from utils import distributed
from utils.cli import hold_until_exit
from utils.errors import OutputError
from utils.files import reporting_disk_full

LOCK_FILE = ".iddc.lock"  # in the folder while its holder runs (one that was killed leaves it, unlocked)
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderBusyError(OutputError):
    """Another process holds the folder's lock: it is writing there now."""


@contextlib.contextmanager
def folder_lock(folders, option):
    """Hold the lock of ``folders`` (one path or several, each created if needed) while the block runs.

    ``option`` names the folder to the user (``--output-dir``). Every folder is locked or none: a
    refusal releases those already taken. On ranks other than 0 nothing is locked.
    """
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    with contextlib.ExitStack() as held:
        if distributed.is_main() and int(os.environ.get("RANK", 0)) == 0:  # also before the process group starts
            for folder in dict.fromkeys(Path(folder) for folder in folders):
                held.enter_context(_locked(folder, option))
        yield


def hold_folder_lock(folders, option):
    """:func:`folder_lock` held until the running command (its ``main``, utils/cli.py) ends."""
    hold_until_exit(folder_lock(folders, option))


@contextlib.contextmanager
def _locked(folder, option):
    path = folder / LOCK_FILE
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]  # deepest first
    with reporting_disk_full(path):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, folder, option)
    except BaseException:
        _remove_folders(created)
        raise
    ended = False
    try:
        yield
        ended = True
    finally:
        with contextlib.suppress(OSError):  # removed while held: the next holder makes a new one
            path.unlink()
        os.close(fd)  # releases the lock
        if not ended:  # a refused or failed command leaves no folder it made only for the lock
            _remove_folders(created)


def _acquire(path, folder, option):
    """The descriptor of ``path``, locked (unless the file system refuses locks); the holder's
    pid and host written in it. Refused with :class:`FolderBusyError` while another process holds it."""
    while True:
        with reporting_disk_full(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                holder = _holder(fd)
                os.close(fd)
                raise FolderBusyError(
                    f"{option} {folder}: another process is writing there ({holder}); wait for it to end, "
                    f"or choose another {option}"
                ) from None
            if err.errno not in _UNSUPPORTED:
                os.close(fd)
                raise
            print(
                f"warning: {option} {folder}: the file system refuses locks ({err.strerror}); going on without "
                f"one, so make sure no other command writes in this folder",
                file=sys.stderr,
                flush=True,
            )
            return fd
        try:
            opened, named = os.fstat(fd), os.stat(path)
            current = (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            with contextlib.suppress(OSError):  # the holder's name is for the refusal's message; a full disk refuses it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # locked a file its holder removed on leaving: lock the one in its place


def _remove_folders(created):
    with contextlib.suppress(OSError):
        for made in created:
            made.rmdir()


def _holder(fd):
    """The holder as its lock file records it ("pid 123 host node7"); empty while it is being written."""
    recorded = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return recorded or "its pid and host are not recorded yet"
