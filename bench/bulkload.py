"""Benchmark: the index daemon's bulk load from Postgres and its restart from a snapshot file, at up to 10M listings.

Usage:
    .venv/bin/python -m bench.bulkload --items 1M                 # table
    .venv/bin/python -m bench.bulkload --items 10M --json         # the issue-19 run (~3 GB in Postgres, ~3 GB RAM)
    .venv/bin/python -m bench.bulkload --items 10M --keep         # keep the filled database for a rerun (--reuse)

The synthetic catalogue of bench.postings (cached as .npy files under --cache, since generating 10M items takes
minutes) is written once into a `postings` table of a scratch database (`lookalike_bench_bulkload_test` on the
server of LOOKALIKE_DATABASE_URL, or of TEST_LOOKALIKE_DATABASE_URL; the same columns and primary key as the real
table, unlogged, no foreign keys: the read path is what is measured). Then, each from a fresh connection:

- `aggregate`: the previous loader (shared.index.load.load_items: keyset chunks aggregated server-side);
- `copy`: binary COPY over listing-id ranges on 1 and on 2 connections (shared.index.load.copy_load_items);
- `segment`: building the snapshot from the loaded arrays (IndexSnapshot.from_items);
- `snapshot file`: writing the snapshot to disk and reading it back (shared.index.files), which is the daemon's
  restart path when the file matches the active generation; `restart_to_ready_s` = read + the change replay of an
  up-to-date file (none) + facets preparation.

Every loaded index is checked equal to the catalogue. Items/s = items / wall seconds of the load alone.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit  # noqa: E402
from bench.shards import _count, catalogue  # noqa: E402
from shared.index import files  # noqa: E402
from shared.index.arrays import ItemArrays  # noqa: E402
from shared.index.load import copy_load_items, load_items  # noqa: E402
from shared.index.refine import prepare as prepare_facets  # noqa: E402
from shared.index.snapshot import IndexSnapshot, warm_up  # noqa: E402

DB_NAME = "lookalike_bench_bulkload_test"
GENERATION = 1


def _admin_url() -> str:
    from sqlalchemy.engine import make_url

    url = os.environ.get("LOOKALIKE_DATABASE_URL") or os.environ.get("TEST_LOOKALIKE_DATABASE_URL") \
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _dsn(database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(_admin_url()).set(database=database).render_as_string(hide_password=False)


def _stage_dtype(n_bytes: int, n_bins: int, pad: int) -> np.dtype:
    """A binary COPY row of the staging table: fixed width (attributes padded to `pad` with -1, count beside)."""
    return np.dtype([
        ("n_fields", ">i2"), ("l_id", ">i4"), ("id", ">i8"), ("l_cat", ">i4"), ("cat", ">i2"), ("l_n", ">i4"),
        ("n_attr", ">i2"), ("l_code", ">i4"), ("code", "u1", (n_bytes,)), ("l_colour", ">i4"),
        ("colour", "u1", (n_bins,)), ("l_arr", ">i4"), ("arr_head", ">i4", (5,)),
        ("attrs", [("l", ">i4"), ("v", ">i2")], (pad,)),
    ])


def fill(items: ItemArrays, chunk: int = 1_000_000) -> float:
    """(Re)create the scratch database with these items as generation 1; returns seconds."""
    import psycopg2

    t = time.perf_counter()
    admin = psycopg2.connect(_dsn("postgres"))
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {DB_NAME}")
    admin.close()
    conn = psycopg2.connect(_dsn(DB_NAME))
    cur = conn.cursor()
    cur.execute("""CREATE UNLOGGED TABLE postings (generation_id integer NOT NULL, listing_id bigint NOT NULL,
                   category_id smallint NOT NULL, attribute_ids smallint[] NOT NULL, code bytea NOT NULL,
                   colour bytea NOT NULL, listing_version integer NOT NULL,
                   updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (generation_id, listing_id))""")
    cur.execute("""CREATE UNLOGGED TABLE stage (listing_id bigint, category_id smallint, n smallint, code bytea,
                   colour bytea, attrs smallint[])""")
    counts = np.diff(items.attr_offsets)
    pad = max(1, int(counts.max(initial=0)))
    rec = _stage_dtype(items.n_bytes, items.n_bins, pad)
    for s in range(0, len(items), chunk):
        part = items.take(np.arange(s, min(s + chunk, len(items))))
        c = np.diff(part.attr_offsets)
        r = np.zeros(len(part), dtype=rec)
        r["n_fields"], r["l_id"], r["l_cat"], r["l_n"] = 6, 8, 2, 2
        r["l_code"], r["l_colour"], r["l_arr"] = part.n_bytes, part.n_bins, 20 + 6 * pad
        r["id"], r["cat"], r["n_attr"] = part.ids, part.category_ids, c
        r["code"], r["colour"] = part.codes, part.colours
        r["arr_head"] = np.array([1, 0, 21, pad, 1], dtype=">i4")  # ndim, no nulls, int2, length, lower bound
        r["attrs"]["l"] = 2
        vals = np.full((len(part), pad), -1, dtype=">i2")
        vals[np.arange(pad)[None, :] < c[:, None]] = part.attribute_ids
        r["attrs"]["v"] = vals
        body = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + r.tobytes() + b"\xff\xff"
        cur.copy_expert("COPY stage FROM STDIN (FORMAT binary)", io.BytesIO(body))
    cur.execute(f"""INSERT INTO postings (generation_id, listing_id, category_id, attribute_ids, code, colour,
                                          listing_version)
                    SELECT {GENERATION}, listing_id, category_id, attrs[1:n], code, colour, 1 FROM stage
                    ORDER BY listing_id""")  # rows in id order, as a table written as listings arrive
    cur.execute("DROP TABLE stage")
    conn.commit()
    conn.autocommit = True
    conn.cursor().execute("VACUUM ANALYZE postings")
    conn.close()
    return time.perf_counter() - t


def _same(a: ItemArrays, b: ItemArrays, chunk: int = 1_000_000) -> bool:
    """Same items, compared in listing-id order a million rows at a time (each item's attributes as a multiset,
    through their count, sum and sum of squares), without copying either side whole."""
    oa, ob = np.argsort(a.ids), np.argsort(b.ids)
    if oa.shape != ob.shape or not np.array_equal(a.ids[oa], b.ids[ob]):
        return False

    def moments(x: ItemArrays, rows: np.ndarray) -> np.ndarray:
        part = x.take(rows)
        v = part.attribute_ids
        row = np.repeat(np.arange(len(part)), np.diff(part.attr_offsets))
        return np.stack([np.bincount(row, minlength=len(part)), np.bincount(row, v, len(part)),
                         np.bincount(row, v * v, len(part))])

    for s in range(0, oa.shape[0], chunk):
        ra, rb = oa[s:s + chunk], ob[s:s + chunk]
        if not (np.array_equal(a.category_ids[ra], b.category_ids[rb]) and np.array_equal(a.codes[ra], b.codes[rb])
                and np.array_equal(a.colours[ra], b.colours[rb]) and np.array_equal(moments(a, ra), moments(b, rb))):
            return False
    return True


def _load(kind: str, n_bytes: int, n_bins: int, n_connections: int = 2) -> tuple[ItemArrays, float]:
    import psycopg2

    conn = psycopg2.connect(_dsn(DB_NAME))
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    t = time.perf_counter()
    cur = conn.cursor()
    if kind == "aggregate":
        items = load_items(cur, generation_id=GENERATION, n_bytes=n_bytes, n_bins=n_bins)
    else:
        items = copy_load_items(lambda: psycopg2.connect(_dsn(DB_NAME)), cur, generation_id=GENERATION,
                                n_bytes=n_bytes, n_bins=n_bins, n_connections=n_connections)
    elapsed = time.perf_counter() - t
    conn.rollback()
    conn.close()
    return items, elapsed


def run(n: int, cache: Path | None, reuse: bool, keep: bool, skip_aggregate: bool) -> dict[str, Any]:
    warm_up()
    t = time.perf_counter()
    items, _ = catalogue(n, 0, cache)
    out: dict[str, Any] = {"items": n, "cpus": os.cpu_count(), "catalogue_s": round(time.perf_counter() - t, 1)}
    out["fill_s"] = None if reuse else round(fill(items), 1)
    loads: dict[str, Any] = {}
    ok = True
    kinds = ([] if skip_aggregate else [("aggregate", 1)]) + [("copy", 1), ("copy", 2)]
    loaded = None
    for kind, n_conn in kinds:
        got, s = _load(kind, items.n_bytes, items.n_bins, n_conn)
        same = _same(got, items)
        ok &= same
        loads[f"{kind}_{n_conn}conn"] = {"seconds": round(s, 2), "items_per_s": round(len(got) / s), "equal": same}
        loaded = got
        del got
    out["load"] = loads
    del items
    t = time.perf_counter()
    snap = IndexSnapshot.from_items(loaded, generation=GENERATION, sequence=0)
    out["segment_build_s"] = round(time.perf_counter() - t, 2)
    del loaded
    out["bytes_per_item"] = round(snap.bytes_per_item, 1)
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-snapshot-"))
    try:
        t = time.perf_counter()
        files.save(snap, tmp / "snap", meta={"model_version": "bench"})
        out["snapshot_write_s"] = round(time.perf_counter() - t, 2)
        out["snapshot_file_bytes"] = sum(f.stat().st_size for f in (tmp / "snap").iterdir())
        del snap
        t = time.perf_counter()
        back, _meta = files.load(tmp / "snap")
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        prepare_facets(back)
        facets_s = time.perf_counter() - t
        out["snapshot_read_s"] = round(read_s, 2)
        out["facets_prepare_s"] = round(facets_s, 2)
        out["restart_to_ready_s"] = round(read_s + facets_s, 2)
        ok &= back.n_items == n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep:
        import psycopg2

        admin = psycopg2.connect(_dsn("postgres"))
        admin.autocommit = True
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        admin.close()
    out["load_avg_1m"] = round(os.getloadavg()[0], 1)
    out["all_equal"] = bool(ok)
    return out


def _print_table(r: dict[str, Any]) -> None:
    print(f"{r['items']:,} items; {r['cpus']} CPUs, load {r['load_avg_1m']} when it ended; fill {r['fill_s']} s")
    print(f"{'load':<16} {'seconds':>9} {'items/s':>11} {'equal':>6}")
    for k, v in r["load"].items():
        print(f"{k:<16} {v['seconds']:>9} {v['items_per_s']:>11,} {str(v['equal']):>6}")
    print(f"segment build {r['segment_build_s']} s; {r['bytes_per_item']} B/item; snapshot file write "
          f"{r['snapshot_write_s']} s, read {r['snapshot_read_s']} s, facets {r['facets_prepare_s']} s -> restart to "
          f"ready {r['restart_to_ready_s']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bulkload", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=_count, default=1_000_000, help="listings (1M, 10M, ...)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-bench-catalogue",
                        help="folder caching the synthetic catalogue as .npy files")
    parser.add_argument("--reuse", action="store_true", help="the scratch database already holds these items")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database afterwards")
    parser.add_argument("--skip-aggregate", action="store_true", help="do not time the previous (aggregate) loader")
    parser.add_argument("--fill-only", action="store_true", help="only fill the scratch database (then --reuse)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.fill_only:
        print(json.dumps({"items": args.items, "fill_s": round(fill(catalogue(args.items, 0, args.cache)[0]), 1)}))
        return 0
    r = run(args.items, args.cache, args.reuse, args.keep, args.skip_aggregate)
    emit(r, args.json, _print_table)
    return 0 if r["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
