"""Resumable HTTP downloads with a progress bar and checksums, and Google Drive files through gdown.

The data (18 GB of COCO images) is fetched with the standard library: a transfer that breaks off
keeps what arrived in ``<dest>.part`` and continues from there (HTTP ``Range``). The released
checkpoints live on Google Drive, whose confirm pages change over time; gdown follows them and is
kept up to date with them. Either way ``dest`` itself only ever appears complete and verified, so
its existence can be trusted.
"""

import hashlib
import http.client
import os
import re
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, build_opener

from tqdm import tqdm

from utils.errors import EXIT_PROBLEMS, ReportedError
from utils.files import disk_full_error, is_disk_full
from utils.optional import require

GDOWN_REQUIREMENT = "gdown>=6.5"  # as requirements.txt writes it
USER_AGENT = "Mozilla/5.0 (compatible; iddc-download/1.0)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(ReportedError, RuntimeError):
    """A file could not be fetched, or what arrived is not the expected file (exit 1: a problem of
    the network or the server, not of the user's input).

    ``reason`` is the cause alone (no advice), for callers that phrase their own advice, such as
    a Google Drive link a person can open in a browser.
    """

    exit_code = EXIT_PROBLEMS

    def __init__(self, message, *, reason=None):
        super().__init__(message)
        self.reason = reason if reason is not None else message


class _Interrupted(Exception):
    """The transfer broke off mid-way; the .part file holds what arrived and can be resumed."""


def partial_path(dest):
    """Where an unfinished download of ``dest`` is kept between runs."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download_file(
    url, dest, *, md5=None, sha256=None, desc=None, timeout=60, chunk_size=1 << 20, quiet=False, retries=3
):
    """Download ``url`` to ``dest`` and return ``dest`` as a Path.

    Resumes a ``dest.part`` left by an earlier run, retries a transfer that breaks off up to
    ``retries`` times (each retry resumes), checks the size the server announced and the given
    digests, and renames to ``dest`` only once all of that holds. ``dest`` is (re)downloaded even
    if it exists: deciding whether an existing file is good enough is the caller's business.
    """
    return _download(
        url,
        Path(dest),
        md5=md5,
        sha256=sha256,
        desc=desc,
        timeout=timeout,
        chunk_size=chunk_size,
        quiet=quiet,
        retries=retries,
        opener=build_opener(),
    )


def download_google_drive(file_id, dest, *, proxy=None, md5=None, sha256=None, timeout=60, quiet=False, retries=3):
    """Download a publicly shared Google Drive file to ``dest`` with gdown and return ``dest`` as a Path.

    gdown follows Drive's "too large to scan for viruses" confirm page and resumes what an earlier
    run left (its ``<dest name>.download<8 characters>.part`` beside ``dest``). ``proxy``
    ("http://host:port") is handed to gdown; without it the usual HTTPS_PROXY variables apply. A
    page instead of the file (download quota exceeded, file not shared) is a DownloadError, and
    ``dest`` appears only once the digests given match.
    """
    gdown = require("gdown", GDOWN_REQUIREMENT, "downloading from Google Drive")
    import requests
    from gdown.exceptions import FileURLRetrievalError

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetched = dest.with_name(dest.name + ".download")  # complete but not yet verified
    try:
        gdown.download(
            id=file_id,
            output=str(fetched),
            quiet=quiet,
            proxy=proxy,
            resume=True,
            retries=retries,
            timeout=timeout,
            use_cookies=False,
        )
    except FileURLRetrievalError as err:
        reason = (
            "Google Drive answered with a page instead of the file (download quota exceeded, or not shared publicly)"
        )
        raise DownloadError(
            f"{reason}: {' '.join(str(err).split())}. Try again later, or download it by hand in a "
            f"browser and put it at {dest}.",
            reason=reason,
        ) from err
    except (gdown.exceptions.DownloadError, requests.exceptions.RequestException, OSError) as err:
        if is_disk_full(err):
            raise disk_full_error(dest) from err
        reason = f"cannot download Google Drive file {file_id} ({type(err).__name__}: {err})"
        raise DownloadError(
            f"{reason}. What arrived is kept beside {dest} and resumed by the next run; or download the "
            f"file by hand and put it at {dest}.",
            reason=reason,
        ) from err
    _check_digests(fetched, dest, f"Google Drive file {file_id}", md5=md5, sha256=sha256)
    os.replace(fetched, dest)
    return dest


def _download(url, dest, *, md5, sha256, desc, timeout, chunk_size, quiet, retries, opener):
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    for attempt in range(retries + 1):
        response = _open(opener, url, dest, timeout)
        try:
            with response:
                _receive(response, url, dest, desc=desc or dest.name, chunk_size=chunk_size, quiet=quiet)
            break
        except _Interrupted as err:
            if attempt == retries:
                raise DownloadError(
                    f"downloading {url} to {dest} broke off ({err}), also after {retries} retries. What arrived "
                    f"is kept in {part}: run the same command again to resume, or download the file by hand "
                    f"and put it at {dest}.",
                    reason=str(err),
                ) from None
            if not quiet:
                tqdm.write(f"{dest.name}: transfer broke off ({err}); resuming (retry {attempt + 1} of {retries})")
    _check_digests(part, dest, url, md5=md5, sha256=sha256)
    os.replace(part, dest)
    return dest


def _open(opener, url, dest, timeout):
    """Start a request for ``url``, asking for the rest only when a .part of ``dest`` exists."""
    part = partial_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return opener.open(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            # The server has nothing past what the .part holds, so the .part does not fit the
            # file as it is now (or it is complete but was never verified): start over.
            part.unlink()
            return _open(opener, url, dest, timeout)
        reason = f"the server answered HTTP {err.code} {err.reason}"
    except URLError as err:
        reason = f"cannot reach the server ({err.reason})"
    except (OSError, http.client.HTTPException) as err:
        reason = f"cannot reach the server ({err})"
    raise DownloadError(
        f"cannot download {url}: {reason}. If this machine is offline or cannot reach that server, "
        f"download the file by hand and put it at {dest}.",
        reason=reason,
    )


def _receive(response, url, dest, *, desc, chunk_size, quiet):
    """Append (206) or write (200) the response body to the .part file."""
    part = partial_path(dest)
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        offset = part.stat().st_size if part.exists() else 0
        if match is None or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)
            raise _Interrupted(
                f"the server resumed at a different place ({response.headers.get('Content-Range')!r} "
                f"for {offset} bytes held); starting over"
            )
        total = int(match.group(3)) if match.group(3) != "*" else (offset + length if length is not None else None)
        mode = "ab"
    elif response.status == 200:
        # Also the answer of a server that ignores Range: its body is the whole file.
        offset, total, mode = 0, length, "wb"
    else:
        raise DownloadError(
            f"{url} answered HTTP {response.status} where 200 or 206 was expected; "
            f"download the file by hand and put it at {dest}.",
            reason=f"unexpected HTTP status {response.status}",
        )
    received = offset
    with (
        open(part, mode) as out,
        tqdm(
            total=total,
            initial=offset,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=quiet,
            leave=True,
        ) as bar,
    ):
        try:
            while chunk := response.read(chunk_size):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            if is_disk_full(err):  # what arrived stays in the .part file, resumed once there is space
                raise disk_full_error(part) from err
            raise _Interrupted(f"{type(err).__name__}: {err} after {received} bytes") from err
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        part.unlink()
        raise DownloadError(
            f"{url} sent {received} bytes but announced {total}; the download was removed. "
            f"Run again, or download the file by hand and put it at {dest}.",
            reason=f"size mismatch ({received} bytes, {total} announced)",
        )


def _check_digests(part, dest, url, *, md5, sha256):
    """Compare the finished download ``part`` with the expected digests; a mismatch removes it."""
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    if not expected:
        return
    hashers = {name: hashlib.new(name) for name in expected}
    with open(part, "rb") as f:
        while block := f.read(1 << 22):
            for hasher in hashers.values():
                hasher.update(block)
    for name, value in expected.items():
        actual = hashers[name].hexdigest()
        if actual != value:
            part.unlink()
            reason = f"{name} is {actual}, expected {value}"
            raise DownloadError(
                f"{dest.name} downloaded from {url}: {reason}. The download was removed; run again, and if it "
                f"keeps failing the file on the server is not the expected one.",
                reason=reason,
            )
