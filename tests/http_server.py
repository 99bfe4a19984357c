"""A loopback HTTP server for the download tests: byte ranges, cut connections, scripted pages.

Tests never leave 127.0.0.1; this server plays COCO's file host, and with DriveProxy in front of
it, Google Drive. tests/conftest.py imports its fixtures for every test module.
"""

import re
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

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
        request = SeenRequest(
            parts.path.lstrip("/"), {k: v[0] for k, v in parse_qs(parts.query).items()}, dict(self.headers)
        )
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
            body, status = body[start : end + 1], 206
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


# Google Drive through gdown. gdown only treats drive.google.com as Drive and always asks it over
# HTTPS, so a loopback URL cannot stand in for it. The tests therefore go through gdown's
# ``proxy=`` option: this proxy accepts CONNECT tunnels to Drive's hosts, ends their TLS with a
# throwaway certificate for those hosts (its CA file is given to requests via REQUESTS_CA_BUNDLE),
# and answers the requests inside with the LoopbackServer's routes. Nothing leaves 127.0.0.1.
DRIVE_HOSTS = ("drive.google.com", "drive.usercontent.google.com", "docs.google.com")


def make_drive_certificates(folder):
    """(CA certificate file, server certificate+key file) for DRIVE_HOSTS, made with cryptography."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(days=1), not_valid_after=now + datetime.timedelta(days=2))

    def certificate(subject, issuer, key, signing_key, extensions):
        builder = x509.CertificateBuilder(
            subject_name=subject,
            issuer_name=issuer,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iddc test CA")])
    ca = certificate(
        ca_name,
        ca_name,
        ca_key,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DRIVE_HOSTS[0])]),
        ca_name,
        server_key,
        ca_key,
        [
            (x509.SubjectAlternativeName([x509.DNSName(host) for host in DRIVE_HOSTS]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    ca_file, server_file = Path(folder) / "ca.pem", Path(folder) / "server.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_file.write_bytes(
        server.public_bytes(serialization.Encoding.PEM)
        + server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, server_file


class DriveProxy:
    """An HTTP proxy on 127.0.0.1 whose CONNECT tunnels to Drive's hosts reach ``loopback``'s routes."""

    def __init__(self, loopback, server_cert_file):
        self.loopback = loopback
        self.tunnels = []  # CONNECT targets, in order
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(server_cert_file)
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(socketserver.StreamRequestHandler):
    rbufsize = 0  # read the CONNECT head byte by byte: nothing of the TLS stream may be buffered here

    def handle(self):
        proxy = self.server.proxy
        request_line = self.rfile.readline(65537).decode("latin-1").split()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        if (
            len(request_line) != 3
            or request_line[0] != "CONNECT"
            or request_line[1].rpartition(":")[0] not in DRIVE_HOSTS
        ):
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        proxy.tunnels.append(request_line[1])
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            tls = proxy.context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        _Handler(tls, self.client_address, proxy.loopback._httpd)  # serves the tunnel's requests, then returns


@pytest.fixture(scope="session")
def drive_certificates(tmp_path_factory):
    return make_drive_certificates(tmp_path_factory.mktemp("drive_tls"))


@pytest.fixture
def drive_proxy(http_server, drive_certificates, monkeypatch):
    """A DriveProxy in front of ``http_server``; requests trusts its CA and no proxy from the environment interferes."""
    ca_file, server_file = drive_certificates
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(ca_file))
    proxy = DriveProxy(http_server, server_file)
    yield proxy
    proxy.stop()
