"""Ingestion benchmark: listings per second per worker process with the shipped models, and the time from
POST /v1/listings to the listing's rows being committed, and to the index daemon serving it (p50/p95).

Runs its own system (embedded PostgreSQL + Redis unless LOOKALIKE_*_URL are set; one worker process).
Usage: python -m bench.ingest [--n 200] [--latency-samples 30] [--json]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select, text

from bench.common import emit, percentiles, print_table, private_system
from lookalike.catalogue import SAMPLE_CSV, read_catalog_csv
from shared.db.models import Listing
from shared.db.session import make_engine


def _post(api: str, seller: str, ext: str, row) -> dict:
    with open(row.image_path, "rb") as fh:
        r = requests.post(f"{api}/v1/listings", data={"seller_id": seller, "external_id": ext, "title": row.title},
                          files={"image": ("p.jpg", fh)}, timeout=60)
    r.raise_for_status()
    return r.json()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=200, help="listings in the throughput batch")
    p.add_argument("--latency-samples", type=int, default=30, help="sequential listings for the latency figures")
    p.add_argument("--workers", type=int, default=1, help="worker processes (Celery concurrency)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = read_catalog_csv(SAMPLE_CSV, seller_id="bench")
    with private_system(extra={"LOOKALIKE_WORKER_CONCURRENCY": str(args.workers)}) as (settings, system):
        api = system.api_url
        engine = make_engine(settings)
        # Warm-up: the worker loads its networks on the first job.
        warm = [_post(api, "warm", f"w-{i}", rows[i])["listing_id"] for i in range(3)]
        _wait(engine, warm, 300)

        commit_ms, search_ms = [], []
        for i in range(args.latency_samples):
            row = rows[(i * 7) % len(rows)]
            t0 = time.perf_counter()
            body = _post(api, "lat", f"l-{i}", row)
            lid, version = body["listing_id"], body["version"]
            seq = None
            while seq is None:
                with engine.connect() as c:
                    seq = c.execute(text("SELECT max(c.seq) FROM changes c JOIN postings p ON p.listing_id = c.listing_id"
                                         " WHERE c.listing_id = :l AND p.listing_version = :v"),
                                    {"l": lid, "v": version}).scalar_one()
                if seq is None:
                    time.sleep(0.005)
            commit_ms.append((time.perf_counter() - t0) * 1000)
            while requests.get(f"{system.index_url}/readyz", timeout=5).json()["last_seq"] < seq:
                time.sleep(0.005)
            search_ms.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            ids = [b["listing_id"] for b in pool.map(lambda i: _post(api, "tput", f"t-{i}", rows[i % len(rows)]),
                                                     range(args.n))]
        post_s = time.perf_counter() - t0
        _wait(engine, ids, 1800)
        total_s = time.perf_counter() - t0
        engine.dispose()
    result = {
        "listings_per_s": round(args.n / total_s, 2),
        "listings_per_s_per_worker": round(args.n / total_s / settings.worker_concurrency, 2), "batch": args.n, "batch_seconds": round(total_s, 1),
        "post_seconds": round(post_s, 2), "worker_processes": settings.worker_concurrency,
        "post_to_commit_ms": percentiles(commit_ms), "post_to_searchable_ms": percentiles(search_ms),
    }

    def table(r):
        print_table(f"Ingestion ({r['worker_processes']} worker process(es), shipped models)",
                    [("listings/s", r["listings_per_s"]), ("listings/s per worker", r["listings_per_s_per_worker"]),
                     (f"batch of {r['batch']} settled in s", r["batch_seconds"])], ("figure", "value"))
        print_table("Latency from POST, idle queue (ms)",
                    [(k, v["p50"], v["p95"], v["n"]) for k, v in (("to rows committed", r["post_to_commit_ms"]),
                                                                  ("to searchable", r["post_to_searchable_ms"]))],
                    ("", "p50", "p95", "n"))
    emit(result, args.json, table)
    return 0


def _wait(engine, ids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as c:
            left = c.execute(select(func.count()).where(Listing.id.in_(ids),
                                                        Listing.status.in_(("pending", "processing")))).scalar_one()
        if not left:
            return
        time.sleep(0.1)
    raise SystemExit(f"{left} listings still pending after {timeout_s}s")


if __name__ == "__main__":
    raise SystemExit(main())
