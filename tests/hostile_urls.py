"""HOSTILE_URLS: image URLs shared.fetch must refuse without connecting or asking DNS (reused by ingestion tests)."""
from __future__ import annotations

# Each is refused by the URL/name/address checks alone: literal addresses need no DNS lookup and
# blocked names are refused before one, so these are safe to feed to any code path offline.
HOSTILE_URLS: tuple[str, ...] = (
    # loopback, unspecified
    "http://127.0.0.1/a.jpg",
    "http://127.1.2.3:8080/a.jpg",
    "http://[::1]/a.jpg",
    "http://0.0.0.0/a.jpg",
    "http://[::]/a.jpg",
    # RFC 1918 private, CGNAT, benchmarking, documentation
    "http://10.0.0.1/a.jpg",
    "http://172.16.0.1/a.jpg",
    "http://172.31.255.254/a.jpg",
    "http://192.168.1.1/a.jpg",
    "https://100.64.0.1/a.jpg",
    "http://198.18.0.1/a.jpg",
    "http://192.0.2.10/a.jpg",
    # link-local and cloud metadata, by address and by name
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "http://instance-data/latest/meta-data/",
    "http://[fe80::1]/a.jpg",
    "http://[fe80::1%25eth0]/a.jpg",
    # names meaning "this machine" or "the internal network"
    "http://localhost/a.jpg",
    "http://LOCALHOST.:8000/a.jpg",
    "http://shop.localhost/a.jpg",
    "http://printer.local/a.jpg",
    "http://intranet/a.jpg",
    # multicast, reserved, broadcast
    "http://224.0.0.1/a.jpg",
    "http://240.0.0.1/a.jpg",
    "http://255.255.255.255/a.jpg",
    "http://[ff02::1]/a.jpg",
    # IPv6 unique-local and IPv4 embedded in IPv6
    "http://[fc00::1]/a.jpg",
    "http://[fd12:3456:789a::1]/a.jpg",
    "http://[::ffff:127.0.0.1]/a.jpg",
    "http://[::ffff:a9fe:a9fe]/a.jpg",
    "https://[::ffff:10.0.0.1]:443/a.jpg",
    "http://[0:0:0:0:0:ffff:7f00:1]/a.jpg",
    "http://[::127.0.0.1]/a.jpg",
    "http://[64:ff9b::a9fe:a9fe]/a.jpg",
    "http://[2002:7f00:1::]/a.jpg",
    # decimal, octal, hex and short IPv4 spellings
    "http://2130706433/a.jpg",
    "http://0x7f.1/a.jpg",
    "http://0x7f000001/a.jpg",
    "http://0177.0.0.1/a.jpg",
    "http://127.1/a.jpg",
    "http://0/a.jpg",
    "http://[127.0.0.1]/a.jpg",
    # other schemes
    "file:///etc/passwd",
    "ftp://example.com/a.jpg",
    "gopher://127.0.0.1:6379/_INFO",
    "dict://127.0.0.1:11211/stats",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "//example.com/a.jpg",
    # credentials and parser-confusion tricks
    "http://user:pass@example.com/a.jpg",
    "http://example.com@127.0.0.1/a.jpg",
    "http://example.com\\@127.0.0.1/a.jpg",
    "http://example.com/a.jpg\r\nHost: 127.0.0.1",
    "http://exa mple.com/a.jpg",
    # empty or hostless
    "",
    "http://",
    "http:///a.jpg",
    "http://:80/a.jpg",
)
