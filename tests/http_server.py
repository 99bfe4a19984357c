"""A loopback HTTP server for the download tests: byte ranges, cut connections, scripted pages.

Tests never leave 127.0.0.1; this server plays COCO's file host and Google Drive. Import the
fixtures into a test module (``from tests.http_server import http_server``) to use them.
"""
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Reply:
    """What a route answers. ``ranges``: honour a Range header; ``cut_after``: close after N body bytes."""

    body: bytes
    status: int = 200
    content_type: str = "application/octet-stream"
    ranges: bool = True
    cut_after: int | None = None
    headers: dict = field(default_factory=dict)


@dataclass
class SeenRequest:
    path: str
    query: dict
    headers: dict


class LoopbackServer:
    """Routes are ``path -> callable(SeenRequest) -> Reply``; every request is logged in ``requests``."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.loopback = self
        # A short poll keeps shutdown (one per test) from waiting the default half second.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path=""):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{path}"

    def serve_bytes(self, path, data, *, ranges=True, cut_first_after=None, content_type="application/octet-stream"):
        """Serve ``data`` at ``path``; the first answer stops after ``cut_first_after`` bytes if given."""
        calls = []

        def route(request):
            cut = cut_first_after if not calls else None
            calls.append(request)
            return Reply(data, content_type=content_type, ranges=ranges, cut_after=cut)

        self.routes[path] = route

    def requests_for(self, path):
        return [request for request in self.requests if request.path == path]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        """Keep the test output quiet."""

    def do_GET(self):
        server = self.server.loopback
        parts = urlsplit(self.path)
        request = SeenRequest(parts.path.lstrip("/"), {k: v[0] for k, v in parse_qs(parts.query).items()},
                              dict(self.headers))
        server.requests.append(request)
        route = server.routes.get(request.path)
        if route is None:
            self._send(404, "text/plain", b"not found", {})
            return
        reply = route(request)
        body, status, headers = reply.body, reply.status, dict(reply.headers)
        match = _RANGE.match(self.headers.get("Range", ""))
        if reply.ranges and status == 200 and match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(body) - 1
            if start >= len(body):
                self._send(416, "text/plain", b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            body, status = body[start:end + 1], 206
        if reply.ranges:
            headers["Accept-Ranges"] = "bytes"
        self._send(status, reply.content_type, body, headers, cut_after=reply.cut_after)

    def _send(self, status, content_type, body, headers, cut_after=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if cut_after is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut_after])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def http_server(monkeypatch):
    """A started LoopbackServer; a proxy configured in the environment must not catch loopback calls."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = LoopbackServer().start()
    yield server
    server.stop()


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens, standing in for an offline machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
