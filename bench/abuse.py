"""Abuse benchmark against a running system (`lookalike up`): hostile input of every kind (no 5xx), the cost of a
cheap-to-send expensive image, a poison listing, a SIGKILLed worker, 20 clients at once, and killed servers.

Reads the same LOOKALIKE_* settings as `lookalike up` (API port, var dir, admin token), so run it with the env
of the `up` it measures. Sections: hostile, cost, poison, kill, load, recovery (--only to pick).
Usage: python -m bench.abuse [--load-seconds 60] [--clients 20] [--only hostile,cost] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import struct
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import psutil
import requests
from PIL import Image

from bench.common import emit, percentiles, print_table
from lookalike.catalogue import SAMPLE_CSV, read_catalog_csv
from shared.supervision import read_report
from shared.config import Settings, load_settings

SECTIONS = ("hostile", "cost", "poison", "kill", "load", "recovery")
TIMEOUT_S = 30


# -- images --------------------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def black_png(width: int = 6000, height: int = 6600) -> bytes:
    """The issue's cost-amplification image: ~115 KB on the wire, 119 MB of RGB once decoded."""
    row = b"\x00" * (1 + width * 3)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sample_photos(n: int = 8) -> list[bytes]:
    rows = read_catalog_csv(SAMPLE_CSV, seller_id="abuse")
    return [r.image_path.read_bytes() for r in rows[:: max(1, len(rows) // n)][:n]]


# -- hostile input ---------------------------------------------------------------------------------------------

def hostile_cases(api: str, photo: bytes, admin_token: str | None) -> list[tuple[str, Callable[[], requests.Response]]]:
    """(kind, request) pairs: the issue's list, the 34 intake cases of tests/unit/test_imaging.py on search and on
    listings, and hostile image URLs on both."""
    from tests.hostile_urls import HOSTILE_URLS
    from tests.unit.test_imaging import BAD_FILES

    s, lst = f"{api}/v1/search", f"{api}/v1/listings"
    uid = uuid.uuid4().hex[:8]

    def post_search(data: dict | None = None, files: dict | None = None, **kw: Any):
        return lambda: requests.post(s, data=data, files=files, timeout=TIMEOUT_S, **kw)

    def post_listing(fields: dict | None = None, files: dict | None = None, **kw: Any):
        return lambda: requests.post(lst, data=fields, files=files, timeout=TIMEOUT_S, **kw)

    def listing_fields(i: str) -> dict:
        return {"seller_id": "abuse", "external_id": f"{uid}-{i}", "title": "Hostile"}

    strip_10000x1 = encode(Image.new("RGB", (10000, 1)))
    strip_1x10000 = encode(Image.new("RGB", (1, 10000)))
    cases: list[tuple[str, Callable[[], requests.Response]]] = [
        ("title-nul", post_listing({**listing_fields("nul"), "title": "a\x00b"}, {"image": ("a.jpg", photo)})),
        ("external-id-nul", post_listing({**listing_fields("x"), "external_id": "e\x00"}, {"image": ("a.jpg", photo)})),
        ("json-lone-surrogate", lambda: requests.post(lst, data=b'{"seller_id":"abuse","external_id":"s-%s",'
                                                      b'"title":"\\ud800","image_url":"http://example.com/a.jpg"}'
                                                      % uid.encode(),
                                                      headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)),
        ("json-nested-1000", lambda: requests.post(s, data=b"[" * 1000 + b"]" * 1000,
                                                   headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)),
        ("json-nested-100000-object", lambda: requests.post(s, data=b'{"a":' * 100000 + b"1" + b"}" * 100000,
                                                            headers={"Content-Type": "application/json"},
                                                            timeout=TIMEOUT_S)),
        ("json-invalid", lambda: requests.post(lst, data=b"{not json", headers={"Content-Type": "application/json"},
                                               timeout=TIMEOUT_S)),
        ("json-not-utf8", lambda: requests.post(lst, data=b'{"title":"\xff\xfe"}',
                                                headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)),
        ("json-array-body", lambda: requests.post(lst, json=[1, 2], timeout=TIMEOUT_S)),
        ("json-field-types", lambda: requests.post(lst, json={"seller_id": {"a": 1}, "external_id": [1],
                                                              "title": 5}, timeout=TIMEOUT_S)),
        ("search-10000x1", post_search(files={"image": ("a.png", strip_10000x1)})),
        ("search-1x10000", post_search(files={"image": ("a.png", strip_1x10000)})),
        ("listing-10000x1", post_listing(listing_fields("strip"), {"image": ("a.png", strip_10000x1)})),
        ("search-1x1", post_search(files={"image": ("a.png", encode(Image.new("RGB", (1, 1))))})),
        ("search-k-empty", post_search({"k": ""}, {"image": ("a.jpg", photo)})),
        ("search-k-negative", post_search({"k": "-1"}, {"image": ("a.jpg", photo)})),
        ("search-k-huge-digits", post_search({"k": "9" * 5000}, {"image": ("a.jpg", photo)})),
        ("search-k-json-inf", lambda: requests.post(s, data=b'{"k": 1e400, "image_url": "http://example.com/a.jpg"}',
                                                    headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)),
        ("search-k-json-bool", lambda: requests.post(s, json={"k": True, "image_url": "http://10.0.0.1/a.jpg"},
                                                     timeout=TIMEOUT_S)),
        ("search-offset-huge", post_search({"offset": "100000000"}, {"image": ("a.jpg", photo)})),
        ("search-rect-garbage", post_search({"rect": "a,b,c,d"}, {"image": ("a.jpg", photo)})),
        ("search-rect-nan", post_search({"rect": "nan,nan,nan,nan"}, {"image": ("a.jpg", photo)})),
        ("search-rect-outside", post_search({"rect": "0,0,1e9,1e9"}, {"image": ("a.jpg", photo)})),
        ("search-rect-json-nested", lambda: requests.post(s, json={"rect": [[1], [2], [3], [4]],
                                                                   "image_url": "http://10.0.0.1/a.jpg"},
                                                          timeout=TIMEOUT_S)),
        ("search-category-unknown", post_search({"category": "blazers\x00"}, {"image": ("a.jpg", photo)})),
        ("search-upload-and-url", post_search({"image_url": "http://example.com/a.jpg"}, {"image": ("a.jpg", photo)})),
        ("search-nothing", post_search({})),
        ("search-empty-upload", post_search(files={"image": ("a.jpg", b"")})),
        ("search-oversized-body", post_search(files={"image": ("a.jpg", b"\xff\xd8\xff" + b"\x00" * (11 << 20))})),
        ("listing-oversized-image", post_listing(listing_fields("big"),
                                                 {"image": ("a.jpg", b"\xff\xd8\xff" + b"\x00" * (11 << 20))})),
        ("listing-upload-and-url", post_listing({**listing_fields("both"), "image_url": "http://example.com/a.jpg"},
                                                {"image": ("a.jpg", photo)})),
        ("listing-internal-url", post_listing({**listing_fields("int"), "image_url": "http://127.0.0.1:8000/a.jpg"})),
        ("listing-title-too-long", post_listing({**listing_fields("long"), "title": "x" * 100_000},
                                                {"image": ("a.jpg", photo)})),
        ("listing-missing-fields", post_listing({"title": "no ids"}, {"image": ("a.jpg", photo)})),
        ("listing-unknown-category", post_listing({**listing_fields("cat"), "category": "Blazers"},
                                                  {"image": ("a.jpg", photo)})),
        ("multipart-garbage", lambda: requests.post(lst, data=b"--xx\r\nContent-Disposition: form-data\r\n\r\n",
                                                    headers={"Content-Type": "multipart/form-data; boundary=xx"},
                                                    timeout=TIMEOUT_S)),
        ("multipart-no-boundary", lambda: requests.post(s, data=b"abc", headers={"Content-Type": "multipart/form-data"},
                                                        timeout=TIMEOUT_S)),
        ("image-missing-listing", lambda: requests.get(f"{lst}/999999999/image", timeout=TIMEOUT_S)),
        ("image-bad-id", lambda: requests.get(f"{lst}/abc/image", timeout=TIMEOUT_S)),
        ("listing-id-overflow", lambda: requests.get(f"{lst}/99999999999999999999999", timeout=TIMEOUT_S)),
        ("delete-missing", lambda: requests.delete(f"{lst}/999999999", timeout=TIMEOUT_S)),
        ("wrong-method", lambda: requests.put(s, timeout=TIMEOUT_S)),
        ("unknown-path", lambda: requests.get(f"{api}/v1/%00", timeout=TIMEOUT_S)),
        ("admin-no-token", lambda: requests.post(f"{api}/v1/admin/reindex", json={}, timeout=TIMEOUT_S)),
        ("admin-bad-category", lambda: requests.post(f"{api}/v1/admin/reindex", json={"category": "\ud800"},
                                                     headers={"Authorization": f"Bearer {admin_token}"},
                                                     timeout=TIMEOUT_S)),
        ("admin-job-overflow", lambda: requests.get(f"{api}/v1/admin/jobs/99999999999999999999",
                                                    headers={"Authorization": f"Bearer {admin_token}"},
                                                    timeout=TIMEOUT_S)),
    ]
    for name, make, _fragment, _kw in BAD_FILES:
        data = make()
        cases.append((f"search-file-{name}", post_search(files={"image": ("f.bin", data)})))
        cases.append((f"listing-file-{name}", post_listing(listing_fields(f"f-{name}"), {"image": ("f.bin", data)})))
    for i, url in enumerate(HOSTILE_URLS):
        cases.append((f"search-url-{i}", post_search({"image_url": url})))
        cases.append((f"listing-url-{i}", post_listing({**listing_fields(f"u-{i}"), "image_url": url})))
    return cases


def deleted_listing_image_case(api: str, photo: bytes) -> tuple[int, int]:
    """(status of the photo while live, status after DELETE)."""
    r = requests.post(f"{api}/v1/listings", data={"seller_id": "abuse", "external_id": f"del-{uuid.uuid4().hex[:8]}"},
                      files={"image": ("a.jpg", photo)}, timeout=TIMEOUT_S)
    lid = r.json()["listing_id"]
    before = requests.get(f"{api}/v1/listings/{lid}/image", timeout=TIMEOUT_S).status_code
    requests.delete(f"{api}/v1/listings/{lid}", timeout=TIMEOUT_S)
    after = requests.get(f"{api}/v1/listings/{lid}/image", timeout=TIMEOUT_S).status_code
    return before, after


def race_case(api: str, photos: list[bytes], n: int = 10) -> dict[str, Any]:
    """n concurrent first POSTs of one (seller_id, external_id) with different photos. An admission 503
    (overloaded, with Retry-After) is retried as a client would; final statuses and how many said created."""
    ext = f"race-{uuid.uuid4().hex[:8]}"
    shed = []

    def one(i: int) -> tuple[int, bool]:
        for _ in range(20):
            r = requests.post(f"{api}/v1/listings", data={"seller_id": "abuse", "external_id": ext},
                              files={"image": ("a.jpg", photos[i % len(photos)])}, timeout=TIMEOUT_S)
            if r.status_code == 503 and r.json().get("error") == "overloaded" and "Retry-After" in r.headers:
                shed.append(i)
                time.sleep(float(r.headers["Retry-After"]))
                continue
            break
        return r.status_code, bool(r.status_code < 300 and r.json().get("created"))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    statuses = [st for st, _ in results]
    return {"final_status": {str(c): statuses.count(c) for c in sorted(set(statuses))},
            "created": sum(c for _, c in results), "overload_503_retried": len(shed)}


def run_hostile(api: str, photos: list[bytes], admin_token: str | None) -> dict:
    by_kind: dict[str, int] = {}
    for kind, call in hostile_cases(api, photos[0], admin_token):
        for attempt in range(5):  # an admission 503 (another request in flight) is retried like a client would
            try:
                status = call().status_code
            except requests.RequestException as exc:
                status = -1
                print(f"{kind}: {exc}")
            if status != 503:
                break
            time.sleep(1)
        by_kind[kind] = status
    live, deleted = deleted_listing_image_case(api, photos[0])
    by_kind["image-of-deleted-listing"] = deleted
    race = race_case(api, photos)
    five = sorted(k for k, v in by_kind.items() if v >= 500 or v < 0)
    race_5xx = sum(v for k, v in race["final_status"].items() if int(k) >= 500)
    return {"kinds": len(by_kind) + 1, "responses_5xx": len(five) + race_5xx,
            "kinds_5xx": five, "status_counts": {str(c): list(by_kind.values()).count(c)
                                                  for c in sorted(set(by_kind.values()))},
            "deleted_image": {"live": live, "after_delete": deleted}, "race_10_first_posts": race,
            "by_kind": by_kind}


# -- cost amplification ------------------------------------------------------------------------------------

def _search(api: str, data: bytes, name: str = "q.jpg") -> tuple[int, float, bool]:
    t0 = time.perf_counter()
    r = requests.post(f"{api}/v1/search", files={"image": (name, data)}, timeout=60)
    return r.status_code, (time.perf_counter() - t0) * 1000, "Retry-After" in r.headers


class RssSampler(threading.Thread):
    """Peak RSS of one process (and its children) while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.start_rss = self.rss()
        self._halt = threading.Event()

    def rss(self) -> int:
        procs = [self.proc] + self.proc.children(recursive=True)
        return sum(p.memory_info().rss for p in procs if p.is_running())

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_cost(api: str, photos: list[bytes], api_pid: int | None, n_idle: int = 15) -> dict:
    black = black_png()
    for p in photos[:2]:
        _search(api, p)  # warm
    idle = [_search(api, photos[i % len(photos)])[1] for i in range(n_idle)]
    singles = [_search(api, black, "black.png") for _ in range(5)]
    sampler = RssSampler(api_pid) if api_pid else None
    if sampler:
        sampler.start()
    normal: list[float] = []
    normal_status: list[int] = []
    done = threading.Event()

    def normal_loop() -> None:
        i = 0
        while not done.is_set():
            st, ms, _ = _search(api, photos[i % len(photos)])
            normal_status.append(st)
            if st == 200:
                normal.append(ms)
            i += 1

    t = threading.Thread(target=normal_loop)
    t.start()
    with ThreadPoolExecutor(8) as pool:
        rounds = [list(pool.map(lambda _: _search(api, black, "black.png"), range(8))) for _ in range(3)]
    done.set()
    t.join()
    if sampler:
        sampler.stop()
    concurrent = [r for rnd in rounds for r in rnd]
    ok = [ms for st, ms, _ in concurrent if st == 200]
    return {
        "black_png_bytes": len(black),
        "single_ms": [round(ms, 1) for _, ms, _ in singles], "single_status": [st for st, _, _ in singles],
        "concurrent_8x3": {"status": {str(c): [r[0] for r in concurrent].count(c) for c in {r[0] for r in concurrent}},
                           "ok_ms": percentiles(ok),
                           "max_ms_any": round(max(ms for _, ms, _ in concurrent), 1),
                           "503_with_retry_after": all(ra for st, _, ra in concurrent if st == 503)},
        "normal_idle_ms": percentiles(idle), "normal_during_ms": percentiles(normal),
        "normal_during_status": {str(c): normal_status.count(c) for c in set(normal_status)},
        "api_rss_mb": None if not sampler else {"before": sampler.start_rss >> 20, "peak": sampler.peak >> 20,
                                               "growth": (sampler.peak - sampler.start_rss) >> 20},
    }


# -- poison listing, killed worker -------------------------------------------------------------------------

def _engine(settings: Settings):
    from shared.db.session import make_engine

    url = settings.database_url
    if not url:
        url = json.loads((Path(settings.var_dir) / "services.json").read_text())["database_url"]
    return make_engine(settings.with_overrides(database_url=url), nullpool=True)


def run_poison(api: str, settings: Settings) -> dict:
    """A 10000x1 photo stored by an older intake (the API now refuses it with 400) and queued with no message:
    the reconciler finds it and the worker must end it `failed` with a message."""
    from sqlalchemy import text

    engine = _engine(settings)
    data = encode(Image.new("RGB", (10000, 1)))
    intake = requests.post(f"{api}/v1/listings", data={"seller_id": "abuse", "external_id": "poison-api"},
                           files={"image": ("p.png", data)}, timeout=TIMEOUT_S)
    sha = f"poison-{uuid.uuid4().hex}"
    with engine.begin() as c:
        c.execute(text("INSERT INTO images (sha256, data, content_type, width, height) VALUES (:s, :d, 'image/png', "
                       "10000, 1)"), {"s": sha, "d": data})
        lid = c.execute(text("INSERT INTO listings (seller_id, external_id, title, description, image_sha256, status, "
                             "version) VALUES ('abuse', :e, 'Poison', '', :s, 'pending', 1) RETURNING id"),
                        {"e": sha, "s": sha}).scalar_one()
        c.execute(text("INSERT INTO jobs (listing_id, listing_version, kind, status, attempts) "
                       "VALUES (:l, 1, 'ingest', 'queued', 0)"), {"l": lid})
    t0 = time.monotonic()
    status, message = None, None
    while time.monotonic() - t0 < 240:
        body = requests.get(f"{api}/v1/listings/{lid}", timeout=TIMEOUT_S).json()
        status, message = body["status"], body["status_message"]
        if status == "failed":
            break
        time.sleep(0.5)
    engine.dispose()
    return {"api_intake_status": intake.status_code, "api_intake_message": intake.json().get("message"),
            "listing_id": lid, "status": status, "message": message,
            "seconds_to_failed": round(time.monotonic() - t0, 1) if status == "failed" else None}


def run_kill(api: str, settings: Settings, photos: list[bytes], tries: int = 4) -> dict:
    """SIGKILL the worker's pool processes while a job runs; seconds until that job is claimed again (retried)
    and until it finishes."""
    from sqlalchemy import text

    report = read_report(settings.var_dir) or {}
    worker_pid = (report.get("watched", {}).get("worker") or {}).get("pid")
    if not worker_pid:
        return {"error": "no worker pid in the supervisor report (is this `lookalike up`?)"}
    engine = _engine(settings)
    for attempt in range(tries):
        ids = []
        for i in range(4):
            r = requests.post(f"{api}/v1/listings", data={"seller_id": "abuse", "external_id":
                                                          f"kill-{uuid.uuid4().hex[:8]}", "title": "Kill test"},
                              files={"image": ("a.jpg", photos[(attempt * 4 + i) % len(photos)])}, timeout=TIMEOUT_S)
            ids.append(r.json()["listing_id"])
        row, deadline = None, time.monotonic() + 60
        while row is None and time.monotonic() < deadline:
            with engine.connect() as c:
                row = c.execute(text("SELECT listing_id, id, attempts FROM jobs WHERE status = 'running' "
                                     "AND listing_id = ANY(:i) LIMIT 1"), {"i": ids}).one_or_none()
            if row is None:
                time.sleep(0.01)
        if row is None:
            continue
        victim, job_id, attempts_at_kill = row
        killed = []
        for child in psutil.Process(worker_pid).children(recursive=True):
            try:
                child.send_signal(signal.SIGKILL)
                killed.append(child.pid)
            except psutil.Error:
                pass
        t0 = time.monotonic()
        retried_s = done_s = None
        status = job_status = None
        while time.monotonic() - t0 < 180:
            with engine.connect() as c:
                row = c.execute(text("SELECT j.status, j.attempts, l.status AS listing_status FROM jobs j JOIN "
                                     "listings l ON l.id = j.listing_id WHERE j.id = :j"), {"j": job_id}).one()
            job_status, status = row.status, row.listing_status
            if retried_s is None and row.attempts > attempts_at_kill:  # claimed again: the retry started
                retried_s = time.monotonic() - t0
            if job_status not in ("queued", "running"):
                done_s = time.monotonic() - t0
                break
            time.sleep(0.25)
        engine.dispose()
        return {"listing_id": victim, "job_id": job_id, "killed_pids": killed, "attempts_at_kill": attempts_at_kill,
                "seconds_to_retry": None if retried_s is None else round(retried_s, 1),
                "seconds_to_job_finished": None if done_s is None else round(done_s, 1),
                "job_status": job_status, "listing_status": status, "tries": attempt + 1}
    engine.dispose()
    return {"error": f"no job was caught running in {tries} tries"}


# -- load -----------------------------------------------------------------------------------------------------

def run_load(api: str, photos: list[bytes], clients: int, seconds: float) -> dict:
    results: list[tuple[int, float, bool]] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        session = requests.Session()
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                r = session.post(f"{api}/v1/search", files={"image": ("q.jpg", photos[i % len(photos)])}, timeout=10)
                item = (r.status_code, (time.perf_counter() - t0) * 1000, "Retry-After" in r.headers)
                with lock:
                    results.append(item)
                if r.status_code == 503:
                    time.sleep(float(r.headers.get("Retry-After", "1")))
            except requests.RequestException as exc:
                with lock:
                    errors.append(type(exc).__name__)
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [ms for st, ms, _ in results if st == 200]
    shed = [ms for st, ms, _ in results if st == 503]
    other = [st for st, _, _ in results if st not in (200, 503)]
    return {"clients": clients, "seconds": seconds, "responses": len(results), "ok": len(ok), "shed_503": len(shed),
            "503_without_retry_after": sum(1 for st, _, ra in results if st == 503 and not ra),
            "other_status": len(other), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "over_2s": sum(1 for _, ms, _ in results if ms > 2000),
            "max_ms": round(max((ms for _, ms, _ in results), default=0), 1),
            "ok_ms": percentiles(ok), "shed_ms": percentiles(shed),
            "throughput_ok_per_s": round(len(ok) / seconds, 2)}


# -- killed servers -------------------------------------------------------------------------------------------

def run_recovery(api: str, settings: Settings, photos: list[bytes]) -> dict:
    """SIGKILL embedded Redis, embedded PostgreSQL, then the API process: each must be restarted by `up` and
    reported in /readyz, and a search must succeed again."""
    out = {}
    for name in ("redis", "postgres", "api"):
        report = read_report(settings.var_dir) or {}
        entry = report.get("watched", {}).get(name)
        if not entry or not entry.get("pid"):
            out[name] = {"error": f"{name} is not watched by this `up` (external server?)"}
            continue
        before = entry["restarts"]
        t0 = time.monotonic()
        os.kill(entry["pid"], signal.SIGKILL)
        back = None
        while time.monotonic() - t0 < 180:
            try:
                r = requests.get(f"{api}/readyz", timeout=2)
                sup = (r.json().get("supervisor") or {}).get(name, {})
                if r.status_code == 200 and sup.get("restarts", 0) > before and sup.get("state") == "running":
                    if _search(api, photos[0])[0] == 200:
                        back = time.monotonic() - t0
                        break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        out[name] = {"seconds_to_serving": None if back is None else round(back, 1),
                     "readyz_supervisor": (read_report(settings.var_dir) or {}).get("watched", {}).get(name)}
    return out


# -- main -----------------------------------------------------------------------------------------------------

def table(result: dict) -> None:
    h = result.get("hostile")
    if h:
        print_table("hostile input", [(h["kinds"], h["responses_5xx"], json.dumps(h["status_counts"]),
                                       json.dumps(h["race_10_first_posts"]), json.dumps(h["deleted_image"]))],
                    ("kinds", "5xx", "statuses", "race (10 first POSTs)", "deleted photo"))
    c = result.get("cost")
    if c:
        rss = c["api_rss_mb"] or {}
        print_table("6000x6600 black PNG", [
            ("single (5 sequential)", json.dumps(c["single_ms"]), json.dumps(c["single_status"])),
            ("8 concurrent x3", json.dumps(c["concurrent_8x3"]["ok_ms"]), json.dumps(c["concurrent_8x3"]["status"])),
            ("normal idle", json.dumps(c["normal_idle_ms"]), ""),
            ("normal during", json.dumps(c["normal_during_ms"]), json.dumps(c["normal_during_status"])),
            ("API RSS MB", json.dumps(rss), "")], ("what", "ms", "status"))
    for key in ("poison", "kill", "load", "recovery"):
        if result.get(key):
            print_table(key, [(k, json.dumps(v)) for k, v in result[key].items()], ("field", "value"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", help="API base URL (default: from LOOKALIKE_API_HOST/PORT)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = load_settings()
    api = args.api or f"http://{settings.api_host}:{settings.api_port}"
    requests.get(f"{api}/healthz", timeout=5).raise_for_status()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    photos = sample_photos()
    report = read_report(settings.var_dir) or {}
    api_pid = (report.get("watched", {}).get("api") or {}).get("pid")
    result: dict[str, Any] = {"api": api}
    if "hostile" in only:
        result["hostile"] = run_hostile(api, photos, settings.admin_token)
    if "cost" in only:
        result["cost"] = run_cost(api, photos, api_pid)
    if "poison" in only:
        result["poison"] = run_poison(api, settings)
    if "kill" in only:
        result["kill"] = run_kill(api, settings, photos)
    if "load" in only:
        result["load"] = run_load(api, photos, args.clients, args.load_seconds)
    if "recovery" in only:
        result["recovery"] = run_recovery(api, settings, photos)
    emit(result, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
