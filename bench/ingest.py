"""Ingestion benchmark (issue 16): listings per second and milliseconds per listing per stage,
(a) the model pipeline alone (decode in a thread pool, then `shared.pipeline.analyze_batch`, in this process) and
(b) end to end: POST /v1/listings through the API, Redis, `lookalike worker --batch N` processes and Postgres, with
the freshness (POST -> rows committed, POST -> served by the index daemon, p50/p95) measured first, at idle.

Runs its own system (embedded PostgreSQL + Redis unless LOOKALIKE_*_URL are set) on the sample catalogue.
Usage: python -m bench.ingest [--device cpu|cuda] [--batch N] [--workers W] [--threads T] [--n 200] [--latency-samples 30]
       [--pipeline-n 128] [--no-e2e] [--no-pipeline] [--json]
--device cuda on a machine without a GPU prints why it is skipped (JSON: {"skipped": ...}) and exits 0.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

STAGE_LINE = re.compile(r"stages n=(\d+) claim=([\d.]+) load_decode=([\d.]+) pipeline=([\d.]+) write=([\d.]+)")


def _post(api: str, seller: str, ext: str, row) -> dict:
    import requests

    with open(row.image_path, "rb") as fh:
        r = requests.post(f"{api}/v1/listings", data={"seller_id": seller, "external_id": ext, "title": row.title},
                          files={"image": ("p.jpg", fh)}, timeout=120)
    r.raise_for_status()
    return r.json()


def pipeline_alone(rows, *, n: int, batch: int) -> dict:
    """The networks and the per-photo work in this process: decode (4 threads) then analyze_batch per batch."""
    import torch

    from shared.config import load_settings
    from shared.imaging import decode_image
    from shared.pipeline import Models, Request, analyze_batch

    settings = load_settings()
    models = Models.load(settings)
    data = [open(rows[i % len(rows)].image_path, "rb").read() for i in range(n)]
    titles = [rows[i % len(rows)].title for i in range(n)]

    def dec(b: bytes):
        return decode_image(b, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                            max_side=settings.decode_max_side, max_aspect=settings.max_image_aspect)

    warm = [Request(dec(d), title=t) for d, t in zip(data[:batch], titles[:batch])]
    analyze_batch(models, warm)
    stages = {"decode": 0.0, "category_text": 0.0, "detect": 0.0, "attributes": 0.0, "features": 0.0}
    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for lo in range(0, n, batch):
            t = time.perf_counter()
            images = list(pool.map(dec, data[lo:lo + batch]))
            stages["decode"] += (time.perf_counter() - t) * 1000
            out = analyze_batch(models, [Request(im, title=ti) for im, ti in zip(images, titles[lo:lo + batch])])
            for a in out:  # per-listing shares of each batched stage
                for k in ("category_text", "detect", "attributes", "features"):
                    stages[k] += a.timings_ms.get(k, 0.0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"listings": n, "listings_per_s": round(n / wall, 2),
            "cpu_ms_per_listing": round((time.process_time() - cpu0) * 1000 / n, 1),
            "ms_per_listing": {k: round(v / n, 2) for k, v in stages.items()}}


def end_to_end(rows, *, n: int, batch: int, workers: int, latency_samples: int) -> dict:
    import requests
    from sqlalchemy import text

    from bench.common import percentiles, private_system
    from shared.db.session import make_engine

    extra = {"LOOKALIKE_WORKER_CONCURRENCY": str(workers), "LOOKALIKE_WORKER_BATCH": str(batch),
             "LOOKALIKE_TORCH_THREADS": os.environ.get("LOOKALIKE_TORCH_THREADS", "1")}
    with private_system(extra=extra) as (settings, system):
        api = system.api_url
        engine = make_engine(settings)
        # Warm-up: every worker process loads its networks on its first job.
        warm = [_post(api, "warm", f"w-{i}", rows[i])["listing_id"] for i in range(2 * workers + 1)]
        _wait(engine, warm, 600)

        commit_ms, search_ms = [], []
        for i in range(latency_samples):
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

        log = system.log_dir / "worker.log"
        log_from = log.stat().st_size
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            ids = [b["listing_id"] for b in pool.map(lambda i: _post(api, "tput", f"t-{i}", rows[i % len(rows)]),
                                                     range(n))]
        post_s = time.perf_counter() - t0
        _wait(engine, ids, 3600)
        total_s = time.perf_counter() - t0
        engine.dispose()
        with open(log, "rb") as fh:
            fh.seek(log_from)
            lines = STAGE_LINE.findall(fh.read().decode(errors="replace"))
    jobs = sum(int(m[0]) for m in lines) or 1
    stage_ms = {k: round(sum(float(m[i]) for m in lines) / jobs, 2)
                for i, k in enumerate(("claim", "load_decode", "pipeline", "write"), start=1)}
    return {"listings": n, "listings_per_s": round(n / total_s, 2), "seconds": round(total_s, 1),
            "post_seconds": round(post_s, 2), "worker_processes": workers, "batch": batch,
            "mean_batch": round(jobs / max(1, len(lines)), 2),
            "worker_ms_per_listing": stage_ms,  # a process's wall time per listing, per stage (sum over processes)
            "post_to_commit_ms": percentiles(commit_ms), "post_to_searchable_ms": percentiles(search_ms)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=1, help="jobs per batch (worker --batch N; pipeline batch)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (Celery concurrency)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (pipeline and workers)")
    p.add_argument("--n", type=int, default=200, help="listings in the end-to-end throughput run")
    p.add_argument("--latency-samples", type=int, default=30, help="sequential listings for the freshness figures")
    p.add_argument("--pipeline-n", type=int, default=128, help="listings through the model pipeline alone")
    p.add_argument("--no-e2e", action="store_true", help="only the model pipeline")
    p.add_argument("--no-pipeline", action="store_true", help="only end to end")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # this process and the workers it starts stay off any GPU
    import torch

    from bench.common import emit, print_table
    from lookalike.catalogue import SAMPLE_CSV, read_catalog_csv

    if args.device == "cuda" and not torch.cuda.is_available():
        why = "cuda: skipped (no GPU on this machine: torch.cuda.is_available() is False)"
        print(why, file=sys.stderr)
        if args.json:
            import json

            print(json.dumps({"device": "cuda", "skipped": why}))
        return 0
    os.environ["LOOKALIKE_TORCH_THREADS"] = str(args.threads)  # Models.load (here) and the workers read it
    torch.set_num_threads(args.threads)
    rows = read_catalog_csv(SAMPLE_CSV, seller_id="bench")
    result = {"device": args.device, "batch": args.batch, "torch_threads_per_process": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}
    if not args.no_pipeline:
        result["pipeline"] = pipeline_alone(rows, n=args.pipeline_n, batch=args.batch)
    if not args.no_e2e:
        result["end_to_end"] = end_to_end(rows, n=args.n, batch=args.batch, workers=args.workers,
                                          latency_samples=args.latency_samples)

    def table(r):
        if "pipeline" in r:
            pl = r["pipeline"]
            print_table(f"Model pipeline alone ({r['device']}, batch {r['batch']}, one process, "
                        f"{r['torch_threads_per_process']} torch thread(s))",
                        [("listings/s", pl["listings_per_s"]), ("CPU ms per listing", pl["cpu_ms_per_listing"])]
                        + [(f"{k} ms/listing", v) for k, v in pl["ms_per_listing"].items()], ("figure", "value"))
        if "end_to_end" in r:
            e = r["end_to_end"]
            print_table(f"End to end ({e['worker_processes']} worker process(es), --batch {e['batch']}, "
                        f"mean batch {e['mean_batch']})",
                        [("listings/s", e["listings_per_s"]), (f"{e['listings']} listings settled in s", e["seconds"])]
                        + [(f"worker {k} ms/listing", v) for k, v in e["worker_ms_per_listing"].items()],
                        ("figure", "value"))
            print_table("Freshness from POST, idle queue (ms)",
                        [(k, v["p50"], v["p95"], v["n"]) for k, v in (("to rows committed", e["post_to_commit_ms"]),
                                                                      ("to searchable", e["post_to_searchable_ms"]))],
                        ("", "p50", "p95", "n"))
    emit(result, args.json, table)
    return 0


def _wait(engine, ids: list[int], timeout_s: float) -> None:
    from sqlalchemy import func, select

    from shared.db.models import Listing

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as c:
            left = c.execute(select(func.count()).where(Listing.id.in_(ids),
                                                        Listing.status.in_(("pending", "processing")))).scalar_one()
        if not left:
            return
        time.sleep(0.05)
    raise SystemExit(f"{left} listings still pending after {timeout_s}s")


if __name__ == "__main__":
    raise SystemExit(main())
