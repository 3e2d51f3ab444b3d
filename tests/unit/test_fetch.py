"""Tests for shared.fetch against real HTTP(S) servers on 127.0.0.1; DNS is faked, the internet is never used."""
from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from PIL import Image

from shared import fetch
from shared.errors import FetchError
from shared.fetch import FetchedImage, blocked_reason, check_url, fetch_image_bytes
from tests.hostile_urls import HOSTILE_URLS

MAX_BYTES = 64 * 1024
TIMEOUT_S = 2.0


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


class Handler(BaseHTTPRequestHandler):
    """One path per server behaviour under test; HTTP/1.0, so every response closes its connection."""

    server: "LocalServer"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.server.hosts_seen.append(self.headers.get("Host", ""))
        path = self.path.split("?", 1)[0]
        route = ROUTES.get(path)
        if route is None and path.startswith("/chain/"):
            route = _chain
        if route is None:
            self.send_error(404, "Not Found")
            return
        try:
            route(self)
        except OSError:  # BrokenPipe, reset, TLS EOF
            pass  # the client gave up on purpose (size cap, deadline)

    def image(self, body: bytes = JPEG, content_type: str = "image/jpeg", length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    hosts_seen: list[str]


def _chain(h: Handler) -> None:
    """/chain/N redirects N more times, then serves the image; relative and absolute Locations alternate."""
    n = int(h.path.rsplit("/", 1)[1])
    if n == 0:
        h.image()
    elif n % 2:
        h.redirect(f"/chain/{n - 1}", status=301 if n % 4 == 1 else 307)
    else:
        h.redirect(f"http://{h.headers['Host']}/chain/{n - 1}", status=308)


def _drip(h: Handler, *, headers_first: bool) -> None:
    """A server that never stalls long enough for a socket timeout but never finishes either."""
    if headers_first:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(MAX_BYTES))
        h.end_headers()
        data = b"\xff" * MAX_BYTES
    else:
        data = b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 10_000
    stop = time.monotonic() + 4  # bounded, so a broken client cannot leave this thread running
    for i in range(len(data)):
        if time.monotonic() > stop:
            return
        h.wfile.write(data[i:i + 1])
        h.wfile.flush()
        time.sleep(0.05)


def _stream_forever_without_length(h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.end_headers()
    for _ in range(64):  # 4 MiB at most, far above MAX_BYTES
        h.wfile.write(b"\x00" * 65536)


ROUTES: dict[str, Callable[[Handler], None]] = {
    "/good.jpg": lambda h: h.image(),
    "/params.jpg": lambda h: h.image(content_type="Image/JPEG; charset=binary; q=1"),
    "/good.png": lambda h: h.image(content_type="image/png"),
    "/loop": lambda h: h.redirect("/loop"),
    "/to-metadata": lambda h: h.redirect("http://169.254.169.254/latest/meta-data/"),
    "/to-private-name": lambda h: h.redirect("http://metadata.google.internal/computeMetadata/v1/"),
    "/to-file": lambda h: h.redirect("file:///etc/passwd"),
    "/no-location": lambda h: (h.send_response(302), h.send_header("Content-Length", "0"), h.end_headers()),
    "/too-large": lambda h: h.image(body=b"\x00" * (MAX_BYTES + 1)),
    "/too-large-declared-only": lambda h: h.image(body=b"", length=MAX_BYTES * 100),
    "/unbounded": _stream_forever_without_length,
    "/lying-short": lambda h: h.image(body=JPEG + b"\x00" * (MAX_BYTES * 4), length=len(JPEG)),
    "/lying-long": lambda h: h.image(body=JPEG, length=len(JPEG) + 5000),
    "/bad-length": lambda h: h.image(length=-5),
    "/html": lambda h: h.image(body=b"<html><body>not here</body></html>", content_type="text/html; charset=utf-8"),
    "/svg": lambda h: h.image(body=b"<svg/>", content_type="image/svg+xml"),
    "/no-type": lambda h: (h.send_response(200), h.send_header("Content-Length", "4"), h.end_headers(),
                           h.wfile.write(b"abcd")),
    "/gzip": lambda h: (h.send_response(200), h.send_header("Content-Type", "image/jpeg"),
                        h.send_header("Content-Encoding", "gzip"), h.send_header("Content-Length", "4"),
                        h.end_headers(), h.wfile.write(b"abcd")),
    "/500": lambda h: h.send_error(500, "Internal Server Error"),
    "/204": lambda h: (h.send_response(204), h.end_headers()),
    "/slow-body": lambda h: _drip(h, headers_first=True),
    "/slow-headers": lambda h: _drip(h, headers_first=False),
}


def _start(server: LocalServer) -> tuple[LocalServer, threading.Thread]:
    server.hosts_seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    srv, thread = _start(LocalServer(("127.0.0.1", 0), Handler))
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def base(server: LocalServer) -> str:
    server.hosts_seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


def get(url: str, **kw: Any) -> FetchedImage:
    kw.setdefault("timeout_s", TIMEOUT_S)
    kw.setdefault("max_bytes", MAX_BYTES)
    kw.setdefault("allow_private", True)
    return fetch_image_bytes(url, **kw)


# ------------------------------------------------------------------------------------------------
# fake DNS and "127.0.0.1 counts as public" switches, for tests that exercise the address checks


REAL_GETADDRINFO = socket.getaddrinfo


class FakeDNS:
    """Answers for chosen names (a list per call, to model rebinding); numeric hosts go to the real resolver."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}

    def __call__(self, host: Any, port: Any, *args: Any, **kw: Any) -> list[tuple]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in self.answers:
            n = self.calls.get(name, 0)
            self.calls[name] = n + 1
            addrs = self.answers[name][min(n, len(self.answers[name]) - 1)]
            out = []
            for a in addrs:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                            (a, int(port or 0)) if fam == socket.AF_INET else (a, int(port or 0), 0, 0)))
            return out
        try:
            ipaddress.ip_address(name)
        except ValueError:
            raise AssertionError(f"test tried a real DNS lookup of {name!r}") from None
        return REAL_GETADDRINFO(host, port, *args, **kw)


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let checks run against our 127.0.0.1 servers: 127.0.0.1 alone is treated as public."""
    real = blocked_reason
    monkeypatch.setattr(fetch, "blocked_reason", lambda ip: None if str(ip) == "127.0.0.1" else real(ip))


# ------------------------------------------------------------------------------------------------
# address checks


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_urls_are_refused_without_dns(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dns = FakeDNS({})  # any name lookup fails the test; numeric ones would still be answered locally
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    with pytest.raises(FetchError):
        check_url(url)
    with pytest.raises(FetchError):
        fetch_image_bytes(url, timeout_s=1, max_bytes=MAX_BYTES)


def test_hostile_list_is_broad() -> None:
    assert len(HOSTILE_URLS) >= 20
    assert len(set(HOSTILE_URLS)) == len(HOSTILE_URLS)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://10.1.2.3/", "private"),
        ("http://169.254.169.254/", "link-local"),
        ("http://[fc00::1]/", "unique-local"),
        ("http://[::ffff:192.168.0.1]/", "IPv4-mapped private"),
        ("http://100.64.1.1/", "carrier-grade NAT"),
        ("http://0x7f.1/", "unusual form"),
        ("http://metadata.google.internal/", "internal name"),
        ("ftp://example.com/a.jpg", "only http:// and https://"),
        ("http://u:p@example.com/", "user name or password"),
        ("http:///a.jpg", "no host"),
    ],
)
def test_refusals_say_why(url: str, fragment: str) -> None:
    with pytest.raises(FetchError, match=fragment):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    ["http://93.184.216.34/a.jpg", "https://8.8.8.8:8443/x.png?size=big", "https://[2606:4700:4700::1111]/x.webp",
     "http://[64:ff9b::5db8:d822]/a.gif", "http://93.184.216.34/caf\u00e9.jpg"],
)
def test_public_literals_pass(url: str) -> None:
    target = check_url(url)
    assert len(target.addresses) == 1
    assert target.path.startswith("/") and all(ord(c) < 128 for c in target.path)


def test_any_private_answer_refuses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({
        "cdn.example.test": [["93.184.216.34", "10.0.0.7"]],
        "ok.example.test": [["93.184.216.34", "2606:4700:4700::1111"]],
    }))
    with pytest.raises(FetchError, match=r"10\.0\.0\.7 \(private"):
        check_url("http://cdn.example.test/a.jpg")
    assert check_url("http://ok.example.test/a.jpg").addresses == ("93.184.216.34", "2606:4700:4700::1111")


def test_allow_private_skips_only_the_address_check(base: str) -> None:
    assert get(base + "/good.jpg", allow_private=True).data == JPEG
    with pytest.raises(FetchError, match="private|loopback"):
        get(base + "/good.jpg", allow_private=False)
    with pytest.raises(FetchError, match="only http"):
        get("file:///etc/passwd", allow_private=True)
    with pytest.raises(FetchError, match="user name"):
        get(base.replace("//", "//u:p@") + "/good.jpg", allow_private=True)


# ------------------------------------------------------------------------------------------------
# real HTTP exchanges


def test_good_jpeg(base: str) -> None:
    got = get(base + "/good.jpg")
    assert got == FetchedImage(data=JPEG, final_url=base + "/good.jpg", content_type="image/jpeg")


def test_content_type_parameters_are_tolerated(base: str) -> None:
    assert get(base + "/params.jpg").content_type == "image/jpeg"
    assert get(base + "/good.png").content_type == "image/png"


def test_redirect_chain_is_followed(base: str, server: LocalServer) -> None:
    got = get(base + "/chain/5")
    assert got.data == JPEG
    assert got.final_url == base + "/chain/0"
    assert len(server.hosts_seen) == 6


def test_too_many_redirects(base: str) -> None:
    with pytest.raises(FetchError, match="redirected more than 5 times"):
        get(base + "/chain/6")
    with pytest.raises(FetchError, match="redirected more than 5 times"):
        get(base + "/loop")


def test_redirect_to_private_address_is_rechecked(base: str, loopback_is_public: None, server: LocalServer) -> None:
    assert get(base + "/good.jpg", allow_private=False).data == JPEG  # the first hop itself is fine
    with pytest.raises(FetchError, match=r"169\.254\.169\.254 \(link-local"):
        get(base + "/to-metadata", allow_private=False)
    with pytest.raises(FetchError, match="internal name"):
        get(base + "/to-private-name", allow_private=False)


def test_redirect_to_other_scheme_is_refused(base: str) -> None:
    with pytest.raises(FetchError, match="only http"):
        get(base + "/to-file")
    with pytest.raises(FetchError, match="without saying where"):
        get(base + "/no-location")


def test_dns_is_pinned_and_host_header_kept(base: str, server: LocalServer, monkeypatch: pytest.MonkeyPatch,
                                            loopback_is_public: None) -> None:
    """A rebinding resolver answers 127.0.0.1 (checked) and then 10.0.0.1: the connection must use the first."""
    dns = FakeDNS({"cdn.example.test": [["127.0.0.1"], ["10.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    port = server.server_address[1]
    got = fetch_image_bytes(f"http://cdn.example.test:{port}/good.jpg", timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES)
    assert got.data == JPEG
    assert dns.calls == {"cdn.example.test": 1}
    assert server.hosts_seen == [f"cdn.example.test:{port}"]


def test_body_over_max_bytes(base: str) -> None:
    with pytest.raises(FetchError, match="more than the 64 KB limit"):
        get(base + "/too-large")
    with pytest.raises(FetchError, match="more than the 64 KB limit"):
        get(base + "/too-large-declared-only")
    with pytest.raises(FetchError, match="larger than the 64 KB limit"):
        get(base + "/unbounded")


def test_lying_content_length(base: str) -> None:
    # Claims less than it sends: we read exactly the declared body and never the rest.
    assert get(base + "/lying-short").data == JPEG
    # Claims more than it sends, then hangs up.
    with pytest.raises(FetchError, match=r"closed the connection after \d+ of \d+ bytes"):
        get(base + "/lying-long")
    with pytest.raises(FetchError, match="invalid Content-Length"):
        get(base + "/bad-length")


@pytest.mark.parametrize(
    ("path", "fragment"),
    [("/html", "sent text/html, not an image"), ("/svg", r"sent image/svg\+xml"), ("/no-type", "no content type"),
     ("/gzip", "compressed with gzip")],
)
def test_wrong_content_type_or_encoding(base: str, path: str, fragment: str) -> None:
    with pytest.raises(FetchError, match=fragment):
        get(base + path)


@pytest.mark.parametrize(("path", "fragment"), [("/missing.jpg", "HTTP 404 Not Found"), ("/500", "HTTP 500"),
                                                ("/204", "HTTP 204")])
def test_non_success_status(base: str, path: str, fragment: str) -> None:
    with pytest.raises(FetchError, match=fragment):
        get(base + path)


@pytest.mark.parametrize("path", ["/slow-body", "/slow-headers"])
def test_slow_drip_hits_the_wall_clock_deadline(base: str, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="took longer than the 0.5 s limit"):
        get(base + path, timeout_s=0.5)
    assert time.monotonic() - started < 1.5


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="connection refused"):
        get(f"http://127.0.0.1:{port}/a.jpg")


def test_dns_failure_and_dns_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(host: Any, *a: Any, **k: Any) -> list[tuple]:
        if host == "slow.example.test":
            time.sleep(1.0)
            return []
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    with pytest.raises(FetchError, match="could not be found"):
        fetch_image_bytes("http://no-such-host.example.test/a.jpg", timeout_s=1, max_bytes=MAX_BYTES)
    started = time.monotonic()
    with pytest.raises(FetchError, match="looking up slow.example.test took longer"):
        fetch_image_bytes("http://slow.example.test/a.jpg", timeout_s=0.3, max_bytes=MAX_BYTES)
    assert time.monotonic() - started < 0.8


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        fetch_image_bytes("http://93.184.216.34/", timeout_s=0, max_bytes=MAX_BYTES)


# ------------------------------------------------------------------------------------------------
# HTTPS: TCP goes to the pinned IP, TLS SNI and certificate name are the URL's host


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=cdn.example.test",
         "-addext", "subjectAltName=DNS:cdn.example.test"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@pytest.fixture
def https_port(tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = LocalServer(("127.0.0.1", 0), Handler)
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    srv, thread = _start(srv)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(fetch, "_ssl_context", lambda: client_ctx)
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_https_verifies_the_url_host_not_the_pinned_ip(https_port: int, monkeypatch: pytest.MonkeyPatch,
                                                       loopback_is_public: None) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({
        "cdn.example.test": [["127.0.0.1"], ["10.0.0.1"]],
        "other.example.test": [["127.0.0.1"]],
    }))
    got = fetch_image_bytes(f"https://cdn.example.test:{https_port}/good.jpg", timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES)
    assert got.data == JPEG
    with pytest.raises(FetchError, match="certificate of other.example.test is not valid"):
        fetch_image_bytes(f"https://other.example.test:{https_port}/good.jpg", timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES)


def test_https_slow_drip_is_cut_at_the_deadline(https_port: int, monkeypatch: pytest.MonkeyPatch,
                                                loopback_is_public: None) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({"cdn.example.test": [["127.0.0.1"]]}))
    started = time.monotonic()
    with pytest.raises(FetchError, match="took longer than the 0.5 s limit"):
        fetch_image_bytes(f"https://cdn.example.test:{https_port}/slow-body", timeout_s=0.5, max_bytes=MAX_BYTES)
    assert time.monotonic() - started < 1.5
