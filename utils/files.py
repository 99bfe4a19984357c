"""Writing files without losing anything: atomic replacement with the user's permissions, and
output locations proven writable (and not the user's inputs) before the long work starts."""

import contextlib
import os
import secrets
from pathlib import Path

from utils.errors import OutputError


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path``, renamed onto it when the block succeeds, removed otherwise.

    A reader, or a crash, sees either the old file or the complete new one. The temporary file is
    created as ``open()`` would create ``path`` (mode 0666 less the umask; tempfile.mkstemp would
    make it 0600) and synced before the rename. ``path``'s folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


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
