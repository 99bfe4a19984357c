"""Writing files without losing anything: atomic replacement with the user's permissions, a full
disk reported as one line that names the file (the previous version stays), safe YAML reading, and
output locations proven writable (and not the user's inputs) before the long work starts."""

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

import yaml

from utils.errors import DiskFullError, OptionError, OutputError

# A full disk, or the user's quota on it.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err):
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def bytes_text(count):
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def nearest_existing(path):
    """``path`` or its nearest ancestor that exists (a folder not made yet has its parent's disk)."""
    path = Path(path).absolute()
    return next(folder for folder in (path, *path.parents) if folder.exists())


def free_bytes(path):
    return shutil.disk_usage(nearest_existing(path)).free


def disk_full_error(path):
    """The one-line error of a write of ``path`` that met a full disk."""
    folder = nearest_existing(Path(path).parent)
    return DiskFullError(
        f"{path}: cannot write it, the disk is full ({bytes_text(free_bytes(folder))} free in {folder}); "
        f"the previous version of the file, if any, is unchanged. Free some space and run the command again"
    )


@contextlib.contextmanager
def reporting_disk_full(path):
    """A full disk met while the block writes ``path`` becomes :func:`disk_full_error`."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path) from err
        raise


class _WriteErrors:
    """A binary file whose write errors are remembered: torch.save reports a failed write of a
    file object as a RuntimeError of its own, which no longer says the disk was full."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.file.flush()


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path``, renamed onto it when the block succeeds, removed otherwise.

    A reader, or a crash, sees either the old file or the complete new one. The temporary file is
    created as ``open()`` would create ``path`` (mode 0666 less the umask; tempfile.mkstemp would
    make it 0600) and synced before the rename. ``path``'s folder is created if needed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with reporting_disk_full(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_binary_atomic(path, write):
    """``write(file)`` into a temporary file beside ``path``, renamed onto it when complete.

    A full disk is the one line of :func:`disk_full_error` even when ``write`` turns the OSError
    into an error of its own (torch.save does).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        writer = _WriteErrors(file)
        try:
            write(writer)
        except Exception as err:
            if writer.error is not None and is_disk_full(writer.error) and not is_disk_full(err):
                raise disk_full_error(path) from err
            raise


def read_yaml(path, where, error=OptionError):
    """The plain values (mappings, lists, strings, numbers) of the YAML file ``path``.

    The one way the project reads YAML: a tag that would build a Python object (``!!python/object``,
    which a full loader would run as code) or a file that is not YAML is one ``error`` naming
    ``where`` (e.g. ``--config FILE``), never a traceback, and nothing of the file is executed.
    """
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as err:
        raise error(f"{where}: not a YAML file (not text: {err.reason})") from err
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        tag = f" ({err.problem.split('tag ', 1)[-1]})" if err.problem and "tag" in err.problem else ""
        raise error(
            f"{where}: holds a YAML tag{tag} that would build a Python object; only plain values "
            f"(mappings, lists, strings, numbers) are read"
        ) from err
    except yaml.YAMLError as err:
        raise error(f"{where}: not valid YAML ({' '.join(str(err).split())})") from err


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_image_atomic(image, path, **params):
    """PIL ``image.save`` through a temporary file (the format follows ``path``'s suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=_pil_format(path), **params)


def _pil_format(path):
    from PIL import Image

    Image.init()
    try:
        return Image.EXTENSION[path.suffix.lower()]
    except KeyError:
        raise OutputError(f"{path}: unknown image format {path.suffix!r}; use .png or .jpg") from None


def same_file(a, b):
    """Whether two paths name one file (hard links and symlinks included)."""
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_writable_dir(path, option):
    """Prove that the folder ``path`` can be written, or created and written; nothing is left behind.

    A folder that does not exist yet is not created (a refused command changes nothing on disk):
    its nearest existing ancestor must be a folder in which this user can create entries. The
    proof is a real write, not os.access: access() says yes to root on a read-only mount.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise OutputError(f"{option} {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        where = "exists" if existing == path else f"cannot be created: {existing} exists"
        raise OutputError(f"{option} {path}: {where} and is not a folder")
    try:
        probe = existing / f".iddc-write-test-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.remove(probe)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot write in {existing} ({err.strerror or err})") from err
    return path


def check_writable_file(path, option, inputs=()):
    """``path`` can be written as a file and is none of the user's ``inputs`` (files read by this run)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; expected a file name")
    for source in inputs:
        if source is not None and Path(source).exists() and same_file(path, source):
            raise OutputError(
                f"{option} {path}: is also an input of this run ({source}); writing it would replace it. "
                f"Choose another file name"
            )
    check_writable_dir(path.parent, f"{option} {path}: its folder")
    return path
