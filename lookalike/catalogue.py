"""Loading a catalogue through the public API (so it goes through the same intake, queue and workers
as a marketplace's listings): the shipped sample, a folder laid out like ../shared/data, or a CSV."""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from sqlalchemy import func, select
from tqdm import tqdm

from shared.config import REPO_ROOT, Settings
from shared.db.models import Listing
from shared.db.session import make_engine

SAMPLE_CSV = REPO_ROOT / "sample" / "catalog.csv"
# How long one listing is re-sent while the API answers "busy" (503 / 429 + Retry-After) before it counts as rejected.
BUSY_RETRY_S = 120.0


@dataclass(frozen=True)
class CatalogueRow:
    seller_id: str
    external_id: str
    title: str
    description: str
    image_path: Path
    category: str | None = None


def read_catalog_csv(path: str | Path, *, seller_id: str = "catalogue") -> list[CatalogueRow]:
    """A CSV with columns image (path relative to the CSV), title, and optionally description,
    external_id, seller_id, category."""
    path = Path(path)
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise SystemExit(f"{path}: the CSV needs an 'image' column (and usually 'title')")
        for i, r in enumerate(reader):
            rows.append(CatalogueRow(seller_id=r.get("seller_id") or seller_id,
                                     external_id=r.get("external_id") or f"row-{i}",
                                     title=r.get("title", "") or "", description=r.get("description", "") or "",
                                     image_path=(path.parent / r["image"]).resolve(),
                                     category=r.get("category") or None))
    return rows


def read_data_folder(data_dir: str | Path) -> list[CatalogueRow]:
    """Every image of a folder laid out like ../shared/data (manifest.csv)."""
    data_dir = Path(data_dir)
    with open(data_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        return [CatalogueRow(seller_id=r["dataset"], external_id=r["id"], title=r.get("title", "") or "",
                             description="", image_path=data_dir / r["file"]) for r in csv.DictReader(fh)]


def rows_for(*, data: str | None, catalog: str | None, limit: int | None) -> list[CatalogueRow]:
    rows = read_data_folder(data) if data else read_catalog_csv(catalog or SAMPLE_CSV, seller_id="sample")
    return rows[:limit] if limit else rows


def _retry_after_s(response: requests.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", 1)), 0.1), 10.0)
    except ValueError:
        return 1.0


def _post(api_url: str, row: CatalogueRow) -> tuple[CatalogueRow, int | None, str]:
    form = {"seller_id": row.seller_id, "external_id": row.external_id, "title": row.title,
            "description": row.description}
    if row.category:
        form["category"] = row.category
    try:
        image = row.image_path.read_bytes()
    except OSError as exc:
        return row, None, f"cannot read {row.image_path}: {exc}"
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        try:
            r = requests.post(f"{api_url}/v1/listings", data=form, files={"image": (row.image_path.name, image)},
                              timeout=60)
        except requests.RequestException as exc:
            return row, None, f"API unreachable: {exc}"
        # A busy API answers 503 / 429 with Retry-After (admission control): a client waits and sends again.
        # Re-sending is safe: a listing is keyed by (seller, external id).
        if r.status_code not in (429, 503) or time.monotonic() >= deadline:
            break
        time.sleep(min(_retry_after_s(r), max(0.0, deadline - time.monotonic())))
    if r.status_code in (200, 202):
        return row, r.json()["listing_id"], ""
    return row, None, f"{r.status_code}: {r.json().get('message', r.text[:200])}"


def ingest_catalogue(rows: list[CatalogueRow], *, api_url: str, settings: Settings, wait: bool = True,
                     stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """POST every row (4 at a time), then follow processing with a progress bar until all are settled."""
    ids: list[int] = []
    rejected: list[str] = []
    with ThreadPoolExecutor(max_workers=4) as pool, tqdm(total=len(rows), desc="submitting", unit="listing", disable=None) as bar:
        for row, listing_id, error in pool.map(lambda r: _post(api_url, r), rows):
            bar.update(1)
            if listing_id is None:
                rejected.append(f"{row.external_id}: {error}")
            else:
                ids.append(listing_id)
    for line in rejected[:10]:
        tqdm.write(f"rejected {line}")
    counts = {"submitted": len(ids), "rejected": len(rejected)}
    if not wait or not ids:
        return counts
    engine = make_engine(settings, nullpool=True)
    with tqdm(total=len(ids), desc="indexing", unit="listing", disable=None) as bar:
        while not stop():
            with engine.connect() as conn:
                by_status = dict(conn.execute(select(Listing.status, func.count()).where(Listing.id.in_(ids))
                                              .group_by(Listing.status)).all())
            settled = by_status.get("ready", 0) + by_status.get("failed", 0) + by_status.get("deleted", 0)
            bar.n = settled
            bar.set_postfix(ready=by_status.get("ready", 0), failed=by_status.get("failed", 0))
            bar.refresh()
            if settled >= len(ids):
                break
            time.sleep(0.5)
    engine.dispose()
    counts.update({k: v for k, v in by_status.items()})
    return counts
