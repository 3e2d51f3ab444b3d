"""The catalogue loader is a well-behaved API client: a busy API (503 + Retry-After) is waited for, not given up on."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lookalike.catalogue import CatalogueRow, _post


def _serve(answers: list[int]) -> tuple[ThreadingHTTPServer, list[int]]:
    """A local HTTP server answering POSTs with the given status codes in turn (202 carries a listing id)."""
    seen: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            code = answers[min(len(seen), len(answers) - 1)]
            seen.append(code)
            body = json.dumps({"listing_id": 7} if code == 202 else {"message": "busy"}).encode()
            self.send_response(code)
            if code == 503:
                self.send_header("Retry-After", "0.1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _row(tmp_path: Path) -> CatalogueRow:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg; the server does not look")
    return CatalogueRow(seller_id="s", external_id="e1", title="t", description="", image_path=image)


def test_busy_api_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    server, seen = _serve([503, 503, 202])
    try:
        _, listing_id, error = _post(f"http://127.0.0.1:{server.server_port}", _row(tmp_path))
    finally:
        server.shutdown()
    assert (listing_id, error) == (7, "")
    assert seen == [503, 503, 202]


def test_a_client_error_is_not_retried(tmp_path: Path) -> None:
    server, seen = _serve([400])
    try:
        _, listing_id, error = _post(f"http://127.0.0.1:{server.server_port}", _row(tmp_path))
    finally:
        server.shutdown()
    assert listing_id is None and error.startswith("400")
    assert seen == [400]
