"""utils/download.py and scripts/download_checkpoint.py against a loopback HTTP server.

Google Drive is reached through gdown's ``proxy=`` option (or HTTPS_PROXY): a loopback proxy that
ends the TLS of Drive's hosts with a test certificate (tests/http_server.py, DriveProxy)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from http_server import Reply

from scripts import download_checkpoint
from scripts.download_checkpoint import RELEASED_CHECKPOINTS
from utils.download import DownloadError, download_file, download_google_drive, partial_path

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 1024 + b"end of file"
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
HALF = len(PAYLOAD) // 2
FILE_ID = "fileid_ABC-123"


def test_download_with_checksums_and_progress(http_server, tmp_path, capsys):
    http_server.serve_bytes("data/file.bin", PAYLOAD)
    dest = tmp_path / "new" / "file.bin"
    result = download_file(
        http_server.url("data/file.bin"), dest, md5=PAYLOAD_MD5, sha256=PAYLOAD_SHA256, desc="payload", chunk_size=8192
    )
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()
    progress = capsys.readouterr().err
    assert "payload" in progress and "100%" in progress


def test_quiet_download_prints_nothing(http_server, tmp_path, capsys):
    http_server.serve_bytes("file.bin", PAYLOAD)
    download_file(http_server.url("file.bin"), tmp_path / "file.bin", quiet=True)
    assert capsys.readouterr() == ("", "")


def test_checksum_mismatch_is_rejected_and_keeps_the_old_file(http_server, tmp_path):
    http_server.serve_bytes("file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"the good old file")
    with pytest.raises(DownloadError) as info:
        download_file(http_server.url("file.bin"), dest, md5="0" * 32, quiet=True)
    message = str(info.value)
    assert "file.bin" in message and "0" * 32 in message and PAYLOAD_MD5 in message
    assert dest.read_bytes() == b"the good old file"
    assert not partial_path(dest).exists()


def test_broken_transfer_is_resumed_with_a_range_request(http_server, tmp_path):
    http_server.serve_bytes("file.bin", PAYLOAD, cut_first_after=100_000)
    dest = tmp_path / "file.bin"
    download_file(http_server.url("file.bin"), dest, md5=PAYLOAD_MD5, chunk_size=4096, quiet=True)
    first, second = http_server.requests_for("file.bin")
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=100000-"
    assert dest.read_bytes() == PAYLOAD


def test_broken_transfer_without_retries_keeps_the_part_for_the_next_run(http_server, tmp_path):
    http_server.serve_bytes("file.bin", PAYLOAD, cut_first_after=HALF)
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as info:
        download_file(http_server.url("file.bin"), dest, retries=0, quiet=True)
    assert str(partial_path(dest)) in str(info.value) and "resume" in str(info.value)
    assert not dest.exists()
    assert partial_path(dest).read_bytes() == PAYLOAD[:HALF]

    download_file(http_server.url("file.bin"), dest, md5=PAYLOAD_MD5, quiet=True)
    assert http_server.requests_for("file.bin")[-1].headers["Range"] == f"bytes={HALF}-"
    assert dest.read_bytes() == PAYLOAD


def test_existing_part_file_is_resumed(http_server, tmp_path):
    http_server.serve_bytes("file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    partial_path(dest).write_bytes(PAYLOAD[:HALF])
    download_file(http_server.url("file.bin"), dest, md5=PAYLOAD_MD5, quiet=True)
    (request,) = http_server.requests_for("file.bin")
    assert request.headers["Range"] == f"bytes={HALF}-"
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_cleanly(http_server, tmp_path):
    http_server.serve_bytes("file.bin", PAYLOAD, ranges=False)
    dest = tmp_path / "file.bin"
    partial_path(dest).write_bytes(b"x" * 5000)
    download_file(http_server.url("file.bin"), dest, md5=PAYLOAD_MD5, quiet=True)
    (request,) = http_server.requests_for("file.bin")
    assert request.headers["Range"] == "bytes=5000-"
    assert dest.read_bytes() == PAYLOAD


def test_part_longer_than_the_file_starts_over(http_server, tmp_path):
    http_server.serve_bytes("file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    partial_path(dest).write_bytes(b"x" * (len(PAYLOAD) + 10))
    download_file(http_server.url("file.bin"), dest, md5=PAYLOAD_MD5, quiet=True)
    assert dest.read_bytes() == PAYLOAD


def test_offline_error_names_url_and_destination(closed_port_url, tmp_path):
    url = closed_port_url + "zips/val2017.zip"
    dest = tmp_path / "val2017.zip"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, timeout=5, quiet=True)
    message = str(info.value)
    assert url in message and str(dest) in message and "by hand" in message
    assert not dest.exists()


def test_http_error_names_the_status(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_file(http_server.url("missing.bin"), tmp_path / "missing.bin", quiet=True)
    assert http_server.url("missing.bin") in str(info.value)


def confirm_form(action, file_id):
    """Drive's virus-scan warning, on one line as Drive sends it (minified)."""
    return (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
        "<p>file.pth (180M) is too large for Google to scan for viruses.</p>"
        f'<form id="download-form" action="{action}" method="get">'
        '<input type="submit" id="uc-download-link" value="Download anyway"/>'
        f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-42"></form>'
        "</body></html>"
    ).encode()


def file_reply(data, name="file.pth", cut_after=None):
    return Reply(data, headers={"Content-Disposition": f'attachment; filename="{name}"'}, cut_after=cut_after)


def serve_drive(server, data, file_id=FILE_ID, cut_first_after=None):
    """Drive as gdown meets it: drive.google.com/uc answers the virus-scan confirm page, whose form
    leads to drive.usercontent.google.com/download, which serves the file."""
    page = confirm_form("https://drive.usercontent.google.com/download", file_id)
    server.routes["uc"] = lambda request: Reply(page, content_type="text/html; charset=utf-8", ranges=False)
    served = []

    def download(request):
        if request.query != {"id": file_id, "export": "download", "confirm": "t", "uuid": "u-42"}:
            return Reply(b"<html>bad request</html>", status=400, content_type="text/html")
        served.append(request)
        return file_reply(data, cut_after=cut_first_after if len(served) == 1 else None)

    server.routes["download"] = download


def leftovers(folder, dest):
    return sorted(p.name for p in Path(folder).iterdir() if p != dest)


def test_google_drive_follows_the_confirm_form(http_server, drive_proxy, tmp_path):
    serve_drive(http_server, PAYLOAD)
    dest = tmp_path / "ckpt.pth"
    assert download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, md5=PAYLOAD_MD5, quiet=True) == dest
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path, dest) == []
    (page_request,) = http_server.requests_for("uc")
    assert page_request.query == {"id": FILE_ID} and page_request.headers["Host"] == "drive.google.com"
    (file_request,) = http_server.requests_for("download")
    assert file_request.headers["Host"] == "drive.usercontent.google.com"
    assert drive_proxy.tunnels == ["drive.google.com:443", "drive.usercontent.google.com:443"]


# gdown reads the body in 512 KiB chunks and keeps only whole chunks of a transfer that breaks off.
GDOWN_CHUNK = 512 * 1024
LARGE = bytes(range(256)) * (4 * GDOWN_CHUNK // 256)
LARGE_MD5 = hashlib.md5(LARGE).hexdigest()


def test_google_drive_transfer_that_breaks_off_is_resumed(http_server, drive_proxy, tmp_path):
    serve_drive(http_server, LARGE, cut_first_after=3 * GDOWN_CHUNK + 1000)
    dest = tmp_path / "ckpt.pth"
    download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, md5=LARGE_MD5, quiet=True)
    assert dest.read_bytes() == LARGE
    first, second = http_server.requests_for("download")
    assert "Range" not in first.headers and second.headers["Range"] == f"bytes={3 * GDOWN_CHUNK}-"


def test_google_drive_partial_download_is_kept_for_the_next_run(http_server, drive_proxy, tmp_path):
    serve_drive(http_server, LARGE, cut_first_after=2 * GDOWN_CHUNK + 1000)
    dest = tmp_path / "ckpt.pth"
    with pytest.raises(DownloadError) as info:
        download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, retries=0, quiet=True)
    assert str(dest) in str(info.value) and not dest.exists()
    (part,) = leftovers(tmp_path, dest)
    assert part.endswith(".part") and (tmp_path / part).read_bytes() == LARGE[: 2 * GDOWN_CHUNK]
    download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, md5=LARGE_MD5, quiet=True)
    assert http_server.requests_for("download")[-1].headers["Range"] == f"bytes={2 * GDOWN_CHUNK}-"
    assert dest.read_bytes() == LARGE and leftovers(tmp_path, dest) == []


def test_google_drive_follows_an_old_style_confirm_link(http_server, drive_proxy, tmp_path):
    page = (
        f'<html><body><a href="/uc?export=download&amp;confirm=Xy_9&amp;id={FILE_ID}">Download anyway</a></body></html>'
    )

    def uc(request):
        if request.query.get("confirm") == "Xy_9":
            return file_reply(PAYLOAD)
        return Reply(page.encode(), content_type="text/html")

    http_server.routes["uc"] = uc
    dest = tmp_path / "ckpt.pth"
    download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, quiet=True)
    assert dest.read_bytes() == PAYLOAD
    assert drive_proxy.tunnels == [
        "drive.google.com:443",
        "docs.google.com:443",
    ]  # gdown follows the link on docs.google.com


def test_google_drive_small_file_comes_directly(http_server, drive_proxy, tmp_path):
    http_server.routes["uc"] = lambda request: file_reply(PAYLOAD)
    dest = tmp_path / "small.pth"
    download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, quiet=True)
    assert dest.read_bytes() == PAYLOAD
    assert len(http_server.requests) == 1


def test_google_drive_page_without_form_is_an_error(http_server, drive_proxy, tmp_path):
    page = b"<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users</body></html>"
    http_server.routes["uc"] = lambda request: Reply(page, content_type="text/html")
    dest = tmp_path / "ckpt.pth"
    with pytest.raises(DownloadError) as info:
        download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, quiet=True)
    message = str(info.value)
    assert "quota" in message and "by hand" in message and str(dest) in message
    assert leftovers(tmp_path, None) == []


def test_google_drive_page_instead_of_the_file_is_an_error(http_server, drive_proxy, tmp_path):
    serve_drive(http_server, PAYLOAD)
    http_server.routes["download"] = lambda request: Reply(
        b"<html><title>Sign in</title>sign in</html>", content_type="text/html"
    )
    dest = tmp_path / "ckpt.pth"
    with pytest.raises(DownloadError, match="page instead of the file"):
        download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, quiet=True)
    assert not dest.exists()


def test_google_drive_digest_mismatch_keeps_the_old_file(http_server, drive_proxy, tmp_path):
    serve_drive(http_server, PAYLOAD)
    dest = tmp_path / "ckpt.pth"
    dest.write_bytes(b"the good old file")
    with pytest.raises(DownloadError, match="0" * 32):
        download_google_drive(FILE_ID, dest, proxy=drive_proxy.url, md5="0" * 32, quiet=True)
    assert dest.read_bytes() == b"the good old file" and leftovers(tmp_path, dest) == []


def test_released_checkpoint_registry():
    assert RELEASED_CHECKPOINTS["vits16"].gdrive_id == "11a_S4t7KbyQJRzKLnhSIoSQ59ykPCxBl"
    assert RELEASED_CHECKPOINTS["vits8"].gdrive_id == "1TNkAyky3903eRRH8OEvrB9EyCKxgNA8w"
    assert (RELEASED_CHECKPOINTS["vits16"].paper_acc, RELEASED_CHECKPOINTS["vits16"].paper_miou) == (59.9, 25.8)
    assert (RELEASED_CHECKPOINTS["vits8"].paper_acc, RELEASED_CHECKPOINTS["vits8"].paper_miou) == (58.3, 25.5)
    assert download_checkpoint.default_dest("vits16") == ROOT / "checkpoints" / "cocostuff27_vits16.pth"
    assert download_checkpoint.default_dest("vits8") == ROOT / "checkpoints" / "cocostuff27_vits8.pth"


def test_download_checkpoint_script(http_server, drive_proxy, tmp_path, capsys):
    checkpoint = RELEASED_CHECKPOINTS["vits16"]
    serve_drive(http_server, PAYLOAD, file_id=checkpoint.gdrive_id)
    dest = tmp_path / "ckpt" / checkpoint.file_name
    argv = ["vits16", "--dest", str(dest), "--proxy", drive_proxy.url]
    assert download_checkpoint.main(argv) == 0
    assert dest.read_bytes() == PAYLOAD
    assert str(dest) in capsys.readouterr().out
    served = len(http_server.requests)

    assert download_checkpoint.main(argv) == 0
    assert "already exists" in capsys.readouterr().out
    assert len(http_server.requests) == served


def test_download_checkpoint_script_offline(closed_port_url, tmp_path, capsys):
    dest = tmp_path / "vits8.pth"
    assert download_checkpoint.main(["vits8", "--dest", str(dest), "--proxy", closed_port_url.rstrip("/")]) == 1
    message = capsys.readouterr().err
    assert "https://drive.google.com/file/d/1TNkAyky3903eRRH8OEvrB9EyCKxgNA8w/view" in message
    assert str(dest) in message
    assert not dest.exists()


def test_download_checkpoint_as_a_command_behind_an_https_proxy(http_server, drive_proxy, tmp_path):
    serve_drive(http_server, PAYLOAD, file_id=RELEASED_CHECKPOINTS["vits8"].gdrive_id)
    dest = tmp_path / "vits8.pth"
    env = dict(os.environ, HTTPS_PROXY=drive_proxy.url)  # the standard variable; REQUESTS_CA_BUNDLE is the proxy's CA
    command = [sys.executable, str(ROOT / "scripts" / "download_checkpoint.py"), "vits8", "--dest", str(dest)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == PAYLOAD
    assert drive_proxy.tunnels[0] == "drive.google.com:443"
