"""Resumable HTTP downloads with a progress bar and checksums, plus Google Drive's confirm step.

The data (18 GB of COCO images) and the released checkpoints are fetched with the standard
library only, so preparing a machine needs nothing beyond the project's requirements. A transfer
that breaks off keeps what arrived in ``<dest>.part`` and continues from there (HTTP ``Range``),
and ``dest`` itself only ever appears complete and verified, so its existence can be trusted.
"""
import hashlib
import http.client
import os
import re
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urljoin, urlsplit
from urllib.request import HTTPCookieProcessor, Request, build_opener

from tqdm import tqdm

from utils.errors import EXIT_PROBLEMS, ReportedError

GOOGLE_DRIVE_URL = "https://drive.google.com/uc"
# Google Drive serves different pages to clients it does not recognise as browsers.
USER_AGENT = "Mozilla/5.0 (compatible; iddc-download/1.0)"
# A confirm page is a few tens of kB; reading more than this means it is not a confirm page.
MAX_PAGE_BYTES = 1 << 20
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


def download_file(url, dest, *, md5=None, sha256=None, desc=None, timeout=60, chunk_size=1 << 20,
                  quiet=False, retries=3):
    """Download ``url`` to ``dest`` and return ``dest`` as a Path.

    Resumes a ``dest.part`` left by an earlier run, retries a transfer that breaks off up to
    ``retries`` times (each retry resumes), checks the size the server announced and the given
    digests, and renames to ``dest`` only once all of that holds. ``dest`` is (re)downloaded even
    if it exists: deciding whether an existing file is good enough is the caller's business.
    """
    return _download(url, Path(dest), md5=md5, sha256=sha256, desc=desc, timeout=timeout,
                     chunk_size=chunk_size, quiet=quiet, retries=retries, opener=build_opener())


def download_google_drive(file_id, dest, *, base_url=GOOGLE_DRIVE_URL, md5=None, sha256=None, desc=None,
                          timeout=60, chunk_size=1 << 20, quiet=False, retries=3):
    """Download a publicly shared Google Drive file to ``dest`` and return ``dest`` as a Path.

    For files too large to be virus-scanned Drive first answers with an HTML page whose form (or,
    on older pages, a ``confirm=`` link) leads to the file; that form is followed with its hidden
    parameters. A web page that offers no way on (download quota exceeded, file not shared) is
    a DownloadError, and so is a web page where the file should be, so that an HTML page is never
    saved as the file. Same resuming, retries and checks as :func:`download_file`.
    """
    dest = Path(dest)
    opener = build_opener(HTTPCookieProcessor(CookieJar()))
    url = f"{base_url}?{urlencode({'export': 'download', 'id': file_id})}"
    response = _open(opener, url, dest, timeout)
    if response.headers.get_content_type() == "text/html":
        with response:
            charset = response.headers.get_content_charset() or "utf-8"
            page = response.read(MAX_PAGE_BYTES).decode(charset, errors="replace")
            url = _follow_confirm_page(page, response.geturl(), dest)
        response = None
    return _download(url, dest, md5=md5, sha256=sha256, desc=desc, timeout=timeout, chunk_size=chunk_size,
                     quiet=quiet, retries=retries, opener=opener, response=response, html_is_error=True)


def _download(url, dest, *, md5, sha256, desc, timeout, chunk_size, quiet, retries, opener,
              response=None, html_is_error=False):
    """Shared body of the public functions; ``response`` is an already opened first attempt."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    for attempt in range(retries + 1):
        if response is None:
            response = _open(opener, url, dest, timeout)
        try:
            with response:
                _receive(response, url, dest, desc=desc or dest.name, chunk_size=chunk_size, quiet=quiet,
                         html_is_error=html_is_error)
            break
        except _Interrupted as err:
            if attempt == retries:
                raise DownloadError(
                    f"downloading {url} to {dest} broke off ({err}), also after {retries} retries. What arrived "
                    f"is kept in {part}: run the same command again to resume, or download the file by hand "
                    f"and put it at {dest}.", reason=str(err)) from None
            if not quiet:
                tqdm.write(f"{dest.name}: transfer broke off ({err}); resuming (retry {attempt + 1} of {retries})")
        response = None
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
        f"download the file by hand and put it at {dest}.", reason=reason)


def _receive(response, url, dest, *, desc, chunk_size, quiet, html_is_error):
    """Append (206) or write (200) the response body to the .part file."""
    part = partial_path(dest)
    if html_is_error and response.headers.get_content_type() == "text/html":
        reason = f"{url} answered with a web page instead of the file"
        raise DownloadError(
            f"{reason} (download quota exceeded, or the file is not shared publicly?). Try again later, or "
            f"download it by hand in a browser and put it at {dest}.", reason=reason)
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        offset = part.stat().st_size if part.exists() else 0
        if match is None or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)
            raise _Interrupted(f"the server resumed at a different place ({response.headers.get('Content-Range')!r} "
                               f"for {offset} bytes held); starting over")
        total = int(match.group(3)) if match.group(3) != "*" else (offset + length if length is not None else None)
        mode = "ab"
    elif response.status == 200:
        # Also the answer of a server that ignores Range: its body is the whole file.
        offset, total, mode = 0, length, "wb"
    else:
        raise DownloadError(f"{url} answered HTTP {response.status} where 200 or 206 was expected; "
                            f"download the file by hand and put it at {dest}.",
                            reason=f"unexpected HTTP status {response.status}")
    received = offset
    with open(part, mode) as out, tqdm(total=total, initial=offset, desc=desc, unit="B", unit_scale=True,
                                       unit_divisor=1024, disable=quiet, leave=True) as bar:
        try:
            while chunk := response.read(chunk_size):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise _Interrupted(f"{type(err).__name__}: {err} after {received} bytes") from err
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        part.unlink()
        raise DownloadError(f"{url} sent {received} bytes but announced {total}; the download was removed. "
                            f"Run again, or download the file by hand and put it at {dest}.",
                            reason=f"size mismatch ({received} bytes, {total} announced)")


def _check_digests(part, dest, url, *, md5, sha256):
    """Compare the finished .part with the expected digests; a mismatch removes it."""
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
                f"keeps failing the file on the server is not the expected one.", reason=reason)


class _DrivePageParser(HTMLParser):
    """Collects the forms (action + hidden inputs), ``confirm=`` links and title of a Drive page."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.confirm_links = []
        self.title = ""
        self._form = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = {"id": attrs.get("id", ""), "action": attrs.get("action", ""),
                          "method": attrs.get("method", "get").lower(), "params": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attrs.get("type", "").lower() == "hidden":
            if attrs.get("name"):
                self._form["params"][attrs["name"]] = attrs.get("value", "")
        elif tag == "a" and "confirm=" in attrs.get("href", ""):
            self.confirm_links.append(attrs["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _follow_confirm_page(page, page_url, dest):
    """The URL that Drive's "download anyway" page leads to; DownloadError when it leads nowhere."""
    parser = _DrivePageParser()
    parser.feed(page)
    parser.close()
    forms = [form for form in parser.forms
             if form["method"] == "get" and ("confirm" in form["params"] or "id" in form["params"])]
    forms.sort(key=lambda form: form["id"] != "download-form")
    if forms:
        action = urljoin(page_url, forms[0]["action"])
        separator = "&" if urlsplit(action).query else "?"
        return f"{action}{separator}{urlencode(forms[0]['params'])}"
    if parser.confirm_links:
        return urljoin(page_url, parser.confirm_links[0])
    title = " ".join(parser.title.split()) or "no title"
    reason = f"Google Drive answered with a web page ({title!r}) that has no download form or confirm link"
    raise DownloadError(
        f"{reason} at {page_url}: the file may be over its download quota or not shared publicly. Try again "
        f"later, or download it by hand in a browser and put it at {dest}.", reason=reason)
