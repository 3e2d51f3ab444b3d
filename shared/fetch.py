"""Safe image URL fetching: http(s), public addresses only (pinned, re-checked per redirect), bounded time and size."""
from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from shared.errors import FetchError

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5

# Media type (parameters stripped, lowercased) -> the canonical type we report.
# image/jpg and image/pjpeg are wrong but common on old CDNs; the bytes are still sniffed by imaging.
ACCEPTED_CONTENT_TYPES: dict[str, str] = {
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/png": "image/png",
    "image/webp": "image/webp",
    "image/gif": "image/gif",
}
_ACCEPTED_WORDS = "image/jpeg, image/png, image/webp or image/gif"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# 200, and 203 (a proxy rewrote the headers); 204/206 and the rest are not "here is the image".
_OK_STATUSES = frozenset({200, 203})
_READ_CHUNK = 64 * 1024
_USER_AGENT = "Lookalike-image-fetcher/0.1 (+https://github.com/lookalike)"

# Names that reach the machine itself or the cloud provider whatever DNS says about them.
_BLOCKED_NAMES = frozenset({
    "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
    "metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal",
})
# Special-use or private-use suffixes (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
_BLOCKED_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa", ".lan", ".intranet")

# (network, words for the message). Checked in order, before ipaddress's own flags, because
# Python's is_private/is_global were wrong for several ranges before 3.11.10 / 3.12.4.
_BLOCKED_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), words)
    for net, words in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("100::/64", "discard"),
        ("2001::/23", "IETF protocol (Teredo, ...)"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique-local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_HOST_CHARS = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


@dataclass(frozen=True)
class FetchedImage:
    """The body of an image URL, the URL it finally came from (after redirects) and its media type."""

    data: bytes
    final_url: str
    content_type: str


@dataclass(frozen=True)
class Target:
    """A checked URL: `addresses` is where to connect; `host` is what Host, SNI and the certificate must name."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def fetch_image_bytes(url: str, *, timeout_s: float, max_bytes: int, allow_private: bool = False) -> FetchedImage:
    """GET an image URL safely (see module docstring); raise FetchError with a plain message on any refusal."""
    if timeout_s <= 0 or max_bytes <= 0:
        raise ValueError(f"timeout_s and max_bytes must be positive, got {timeout_s} and {max_bytes}")
    # One deadline for the whole fetch: DNS, connects, every redirect hop and the body.
    deadline = time.monotonic() + timeout_s
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        target = _check_url(current, allow_private=allow_private, deadline=deadline, timeout_s=timeout_s)
        outcome = _get_once(target, deadline=deadline, timeout_s=timeout_s, max_bytes=max_bytes)
        if isinstance(outcome, FetchedImage):
            return outcome
        current = urljoin(target.url, outcome)
        logger.debug("image URL %s redirects to %s", target.url, current)
    raise FetchError(f"image URL redirected more than {MAX_REDIRECTS} times")


def check_url(url: str, *, allow_private: bool = False, timeout_s: float = 5.0) -> Target:
    """Validate an image URL and resolve its host; raise FetchError unless every address is public."""
    return _check_url(url, allow_private=allow_private, deadline=time.monotonic() + timeout_s, timeout_s=timeout_s)


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be fetched from ('loopback', 'private', ...), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = blocked_reason(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if ip in _NAT64:
            # DNS64 networks hand out 64:ff9b::a.b.c.d for every IPv4-only host: judge a.b.c.d.
            inner = blocked_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"NAT64 {inner}" if inner else None
        if ip.scope_id:
            return "scoped (zone id)"
    for net, words in _BLOCKED_NETWORKS:
        if ip.version == net.version and ip in net:
            return words
    if ip.is_multicast or ip.is_reserved or ip.is_private or ip.is_link_local or not ip.is_global:
        return "non-public"
    return None


# --------------------------------------------------------------------------------------------
# URL checks


def _check_url(url: str, *, allow_private: bool, deadline: float, timeout_s: float) -> Target:
    """Parse, normalise and resolve one hop's URL; the address check is skipped only with allow_private."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("image URL is empty")
    # Parsers disagree about whitespace, control characters and backslashes; refusing them
    # closes the "one parser sees host A, another sees host B" family of tricks.
    if any(ch <= " " or ch == "\x7f" for ch in url) or "\\" in url:
        raise FetchError("image URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port_in_url = parts.port
    except ValueError as exc:
        raise FetchError(f"image URL is malformed ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"only http:// and https:// image URLs are accepted, not {scheme or 'a URL without scheme'}")
    if "@" in parts.netloc:
        raise FetchError("image URLs with a user name or password are not accepted")
    host = _normalise_host(parts.hostname or "", bracketed="[" in parts.netloc)
    port = port_in_url if port_in_url is not None else (443 if scheme == "https" else 80)
    if port == 0:
        raise FetchError("image URL has port 0")
    literal = _ip_literal(host)
    if not allow_private and literal is None:
        _check_host_name(host)
    if literal is not None:
        addresses: tuple[str, ...] = (str(literal),)
    else:
        addresses = _resolve(host, port, deadline=deadline, timeout_s=timeout_s)
    if not allow_private:
        for address in addresses:
            reason = blocked_reason(ipaddress.ip_address(address))
            if reason is not None:
                raise FetchError(
                    f"image URL points to {address} ({reason} address); only public internet addresses are allowed"
                )
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def _normalise_host(raw: str, *, bracketed: bool) -> str:
    """Lowercase ASCII host (IDNA for non-ASCII names), no trailing dot; refuse empty and odd spellings."""
    host = raw.rstrip(".") if not bracketed else raw
    if not host:
        raise FetchError("image URL has no host name")
    if "%" in host:
        raise FetchError("image URLs with an IPv6 zone id or percent-encoded host are not accepted")
    if bracketed:
        return host  # urlsplit already required a valid IPv6 literal between the brackets
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise FetchError(f"image URL host {raw!r} is not a valid domain name") from exc
    if not _HOST_CHARS.fullmatch(host):
        raise FetchError(f"image URL host {raw!r} is not a valid domain name")
    # WHATWG URL rule: a host whose last label is a number is an IPv4 address. Only the plain
    # dotted-quad form is accepted; 2130706433, 0x7f.1, 0177.0.0.1 and 127.1 are refused outright.
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]) and _ip_literal(host) is None:
        raise FetchError(f"image URL host {raw!r} is an IP address written in an unusual form; write it as a.b.c.d")
    return host


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if `host` is a canonical IP literal (strict: no octal, hex or short forms)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_host_name(host: str) -> None:
    """Refuse names that mean 'this machine' or 'the internal network' whatever they resolve to."""
    if host in _BLOCKED_NAMES or host.endswith(_BLOCKED_SUFFIXES):
        raise FetchError(f"image URL host {host} is an internal name; only public internet addresses are allowed")
    if "." not in host:
        # Single-label names resolve through the resolver's search domains, i.e. to internal hosts.
        raise FetchError(f"image URL host {host} is not a full domain name; only public internet addresses are allowed")


def _resolve(host: str, port: int, *, deadline: float, timeout_s: float) -> tuple[str, ...]:
    """All addresses of `host`, in resolver order, within the deadline (getaddrinfo has no timeout of its own)."""
    results: list[tuple] = []
    errors: list[BaseException] = []

    def lookup() -> None:
        try:
            results.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP))
        except (OSError, UnicodeError) as exc:
            errors.append(exc)

    # A daemon thread: a resolver stuck past our deadline is abandoned, not waited for.
    worker = threading.Thread(target=lookup, name="lookalike-fetch-dns", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise FetchError(f"looking up {host} took longer than the {timeout_s:g} s limit")
    if errors:
        raise FetchError(f"image URL host {host} could not be found (DNS lookup failed)") from errors[0]
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in results:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            address = f"{address.split('%', 1)[0]}%{sockaddr[3]}"
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(f"image URL host {host} has no internet address")
    return tuple(addresses)


# --------------------------------------------------------------------------------------------
# one HTTP exchange, connected to the checked address


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to addresses we already checked; `host` still names the URL's host (Host header)."""

    def __init__(self, target: Target, *, deadline: float) -> None:
        super().__init__(target.host, target.port, timeout=max(0.001, deadline - time.monotonic()))
        self._addresses = target.addresses
        self._deadline = deadline
        # http.client drops self.sock once a response will close the connection; the watchdog
        # still needs the socket to cut a slow body short.
        self.pinned_sock: socket.socket | None = None

    def connect(self) -> None:
        # Connect to the checked IPs, never to self.host: a second lookup could answer differently
        # (DNS rebinding) and send us to 127.0.0.1 after the check passed.
        last: OSError | None = None
        for address in self._addresses:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.sock = self.pinned_sock = socket.create_connection((address, self.port), timeout=remaining)
                return
            except OSError as exc:
                last = exc
        raise last if last is not None else TimeoutError("deadline passed before connecting")


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS variant: TCP to the checked IP, TLS SNI and certificate check against the URL's host name."""

    default_port = 443

    def connect(self) -> None:
        super().connect()
        self.sock = self.pinned_sock = _ssl_context().wrap_socket(self.sock, server_hostname=self.host)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Verifying client context; certifi's bundle when installed (as requests does), else the system store."""
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _get_once(target: Target, *, deadline: float, timeout_s: float, max_bytes: int) -> FetchedImage | str:
    """One GET: the image, or the Location of a redirect (returned as a string, not followed here)."""
    if time.monotonic() >= deadline:
        raise FetchError(_timeout_message(timeout_s))
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target, deadline=deadline)
    expired = threading.Event()

    def expire() -> None:
        # Socket timeouts bound each recv, not the sum: a server dripping one byte per second
        # would never trip them. At the deadline, shut the socket so any blocked read returns.
        expired.set()
        sock = conn.pinned_sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain-socket method, also for TLS
            except OSError:
                pass

    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    watchdog.daemon = True
    watchdog.start()
    resp: http.client.HTTPResponse | None = None
    try:
        conn.request("GET", target.path, headers={
            "User-Agent": _USER_AGENT,
            "Accept": "image/jpeg, image/png, image/webp, image/gif",
            "Accept-Encoding": "identity",
            "Connection": "close",
        })
        resp = conn.getresponse()
        outcome = _read_response(resp, target=target, max_bytes=max_bytes, expired=expired)
        if expired.is_set() or time.monotonic() > deadline:
            raise FetchError(_timeout_message(timeout_s))
        return outcome
    except FetchError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set() or time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            raise FetchError(_timeout_message(timeout_s)) from exc
        raise FetchError(_connection_message(target, exc)) from exc
    finally:
        watchdog.cancel()
        if resp is not None:
            resp.close()
        conn.close()


def _read_response(
    resp: http.client.HTTPResponse, *, target: Target, max_bytes: int, expired: threading.Event
) -> FetchedImage | str:
    """Check status and headers, then stream at most max_bytes of body; `expired` is set by the watchdog."""
    status = resp.status
    if status in _REDIRECT_STATUSES:
        location = (resp.getheader("Location") or "").strip()
        if not location:
            raise FetchError(f"image URL answered HTTP {status} (a redirect) without saying where to")
        return location
    if status not in _OK_STATUSES:
        raise FetchError(f"image URL answered HTTP {status} {resp.reason}".rstrip() + " instead of the image")
    media_type = (resp.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
    content_type = ACCEPTED_CONTENT_TYPES.get(media_type)
    if content_type is None:
        raise FetchError(f"image URL sent {media_type or 'no content type'}, not an image ({_ACCEPTED_WORDS} expected)")
    encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise FetchError(f"image URL sent the image compressed with {encoding}, which is not accepted")
    declared = _declared_length(resp)
    if declared is not None and declared > max_bytes:
        raise FetchError(f"image at the URL is {_fmt_bytes(declared)}, more than the {_fmt_bytes(max_bytes)} limit")
    chunks: list[bytes] = []
    total = 0
    while True:
        # read1: at most one recv per call, so the watchdog and the size cap act between small reads.
        chunk = resp.read1(_READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"image at the URL is larger than the {_fmt_bytes(max_bytes)} limit")
        chunks.append(chunk)
    if expired.is_set():
        # The watchdog's shutdown looks like end-of-body to read1; the caller reports the timeout.
        return FetchedImage(data=b"", final_url=target.url, content_type=content_type)
    if declared is not None and total < declared:
        raise FetchError(f"image URL closed the connection after {total} of {declared} bytes")
    return FetchedImage(data=b"".join(chunks), final_url=target.url, content_type=content_type)


def _declared_length(resp: http.client.HTTPResponse) -> int | None:
    """Content-Length as an int; several or malformed values are refused (response-splitting tricks)."""
    raw = resp.getheader("Content-Length")
    if raw is None:
        return None
    if resp.chunked:
        return None  # HTTP/1.1: Transfer-Encoding wins over Content-Length
    try:
        value = int(raw.strip(), 10)
    except ValueError as exc:
        raise FetchError(f"image URL sent an invalid Content-Length ({raw!r})") from exc
    if value < 0:
        raise FetchError(f"image URL sent an invalid Content-Length ({raw!r})")
    return value


def _timeout_message(timeout_s: float) -> str:
    return f"fetching the image URL took longer than the {timeout_s:g} s limit"


def _connection_message(target: Target, exc: BaseException) -> str:
    """Words for a transport failure (refused, reset, bad TLS certificate, not HTTP)."""
    where = f"{target.host}:{target.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the HTTPS certificate of {target.host} is not valid ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"could not open a secure (HTTPS) connection to {where}"
    if isinstance(exc, ConnectionRefusedError):
        return f"could not connect to {where} (connection refused)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"{where} closed the connection without answering"
    if isinstance(exc, (http.client.BadStatusLine, http.client.LineTooLong, http.client.HTTPException)):
        return f"{where} did not answer with valid HTTP"
    return f"could not fetch the image from {where} ({exc.__class__.__name__})"


def _fmt_bytes(n: int) -> str:
    """Sizes the way a file browser shows them (MB = 1024*1024 bytes)."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f}".rstrip("0").rstrip(".") + " MB"
    if n >= 1024:
        return f"{n / 1024:.1f}".rstrip("0").rstrip(".") + " KB"
    return f"{n} bytes"
