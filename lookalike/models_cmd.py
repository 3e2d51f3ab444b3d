"""`lookalike models status|baseline|promote|rollback`: gated model swaps between index generations.

A new set of checkpoints builds a new generation beside the active one (workers running them, `lookalike reindex`);
it serves nothing until `promote` has evaluated it on the golden set (lookalike.golden) with those networks and
found no figure below the active generation's recorded figures minus the tolerance, and no listing of the active
generation missing from it. `rollback` re-activates the generation that was active before. The daemon keeps the
previously active generation in memory, so API processes still running its networks get answers of that generation
(never mixed codes) until they restart on the new checkpoints.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import Engine, func, select

DEFAULT_TOLERANCE = 0.02  # absolute, per golden figure (25 queries: one query is 0.04)


def _engine(settings) -> Engine:
    from shared.db.session import make_engine

    return make_engine(settings)


def generations(engine: Engine) -> list[dict[str, Any]]:
    from shared.db.models import IndexGeneration, Posting
    from shared.db.session import session_scope

    with session_scope(engine) as s:
        counts = dict(s.execute(select(Posting.generation_id, func.count()).group_by(Posting.generation_id)).all())
        rows = s.execute(select(IndexGeneration).order_by(IndexGeneration.id)).scalars().all()
        return [{"id": g.id, "status": g.status, "model_version": g.model_version, "networks": g.networks,
                 "params": g.params, "golden": g.golden, "previous_id": g.previous_id, "postings": counts.get(g.id, 0),
                 "activated_at": g.activated_at.isoformat() if g.activated_at else None} for g in rows]


def missing_listings(engine: Engine, *, active_id: int, candidate_id: int) -> int:
    """Listings indexed in the active generation but not in the candidate (promoting would hide them)."""
    from shared.db.models import Listing, Posting
    from shared.db.session import session_scope

    with session_scope(engine) as s:
        cand = select(Posting.listing_id).where(Posting.generation_id == candidate_id)
        return int(s.execute(select(func.count()).select_from(Posting).join(Listing, Listing.id == Posting.listing_id)
                             .where(Posting.generation_id == active_id, Listing.deleted_at.is_(None),
                                    Posting.listing_id.not_in(cand))).scalar_one())


def record_golden(engine: Engine, models: Any, generation_id: int) -> dict[str, Any]:
    """Evaluate a generation of this process's networks on the golden set and store the figures on it."""
    from lookalike.golden import MIN_QUERIES, evaluate
    from shared.db.models import IndexGeneration
    from shared.db.session import session_scope

    with session_scope(engine) as s:
        gen = s.get(IndexGeneration, generation_id)
        if gen.model_version != models.model_version:
            raise SystemExit(f"generation {gen.id} is built with {gen.model_version}; this process runs "
                             f"{models.model_version}: point LOOKALIKE_MODELS_DIR at that generation's checkpoints")
        weight = float((gen.params or {}).get("colour_weight", models.ranking_params["colour_weight"]))
    result = evaluate(engine, models, generation_id, colour_weight=weight)
    if result.n_queries < MIN_QUERIES:
        raise SystemExit(f"generation {generation_id} holds only {result.n_queries} golden queries (needs "
                         f"{MIN_QUERIES}): index the sample catalogue first (`lookalike ingest`)")
    golden = {**result.figures, "n_queries": result.n_queries}
    with session_scope(engine) as s:
        s.get(IndexGeneration, generation_id).golden = golden
    return golden


def promote(engine: Engine, models: Any, *, generation_id: int | None, tolerance: float,
            force: bool = False) -> dict[str, Any]:
    """Gate and activate a built generation; returns the report (promoted: bool, and why not)."""
    from lookalike.golden import compare
    from shared.db import queries
    from shared.db.models import IndexGeneration
    from shared.db.session import session_scope

    with session_scope(engine) as s:
        active = queries.active_generation(session=s)
        if generation_id is None:
            cand = s.execute(select(IndexGeneration).where(IndexGeneration.status == "building")
                             .order_by(IndexGeneration.id.desc()).limit(1)).scalar_one_or_none()
        else:
            cand = s.get(IndexGeneration, generation_id)
        if cand is None:
            raise SystemExit("no generation to promote (none is building)")
        if cand.status == "active":
            raise SystemExit(f"generation {cand.id} is already active")
        cand_id, active_id = cand.id, None if active is None else active.id
        baseline = None if active is None else active.golden
    report: dict[str, Any] = {"candidate": cand_id, "active": active_id, "tolerance": tolerance, "forced": force}
    report["missing_listings"] = 0 if active_id is None else missing_listings(engine, active_id=active_id,
                                                                             candidate_id=cand_id)
    if models is not None:
        report["figures"] = record_golden(engine, models, cand_id)
        report["baseline"] = baseline
        gate = compare(report["figures"], baseline, tolerance=tolerance)
    else:
        gate = {"ok": False, "reason": "not evaluated (no networks loaded)", "drops": {}}
    if report["missing_listings"]:
        gate = {**gate, "ok": False, "reason": f"{report['missing_listings']} listing(s) of the active generation are "
                                               "not in the candidate yet (reindex, or wait for the build)"}
    report["gate"] = gate
    report["promoted"] = bool(gate["ok"] or force)
    if report["promoted"]:
        with session_scope(engine) as s:
            queries.activate_generation(session=s, generation=s.get(IndexGeneration, cand_id))
    return report


def rollback(engine: Engine) -> dict[str, Any]:
    """Re-activate the generation that was active before the current one."""
    from shared.db import queries
    from shared.db.models import IndexGeneration
    from shared.db.session import session_scope

    with session_scope(engine) as s:
        active = queries.active_generation(session=s)
        if active is None or active.previous_id is None:
            raise SystemExit("nothing to roll back to: the active generation records no previous one")
        previous = s.get(IndexGeneration, active.previous_id)
        from_id = active.id
        queries.activate_generation(session=s, generation=previous)  # records from_id as its previous: undo-able
        return {"from": from_id, "to": previous.id, "model_version": previous.model_version}


def _print_status(rows: list[dict[str, Any]]) -> None:
    print(f"{'id':>4} {'status':<9} {'postings':>8} {'own@1':>6} {'cat':>6} {'p@10':>6}  model_version")
    for g in rows:
        gold = g["golden"] or {}
        fig = [f"{gold[k]:.3f}" if k in gold else "-" for k in ("own_at_1", "category", "p_at_10")]
        print(f"{g['id']:>4} {g['status']:<9} {g['postings']:>8} {fig[0]:>6} {fig[1]:>6} {fig[2]:>6}  "
              f"{g['model_version']}")


def main(argv: list[str] | None = None) -> int:
    from shared.config import load_settings

    p = argparse.ArgumentParser(prog="lookalike models", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("status", help="every generation: status, postings, golden figures, versions")
    sub.add_parser("baseline", help="record the golden figures of the active generation (run with its checkpoints)")
    pp = sub.add_parser("promote", help="evaluate a built generation on the golden set and activate it if it holds")
    pp.add_argument("--generation", type=int, default=None, help="default: the newest building generation")
    pp.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                    help=f"largest allowed drop of any golden figure (absolute, default {DEFAULT_TOLERANCE})")
    pp.add_argument("--force", action="store_true", help="activate even if the gate fails (it is still reported)")
    pp.add_argument("--skip-golden", action="store_true", help="do not load networks (only with --force)")
    sub.add_parser("rollback", help="re-activate the previously active generation")
    gp = sub.add_parser("golden", help="(re)build sample/golden.json from the sample catalogue and the data labels")
    gp.add_argument("--build", action="store_true", required=True)
    for sp in sub.choices.values():
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    settings = load_settings()
    if args.action == "golden":
        from lookalike.golden import GOLDEN_FILE, build

        golden = build(settings.data_dir)
        GOLDEN_FILE.write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
        out: dict[str, Any] = {"file": str(GOLDEN_FILE.relative_to(GOLDEN_FILE.parents[1])),
                               "queries": len(golden["queries"])}
        print(json.dumps(out) if args.json else f"wrote {out['file']}: {out['queries']} queries")
        return 0
    from lookalike.services import services_for

    # The database of a running `lookalike up` (or LOOKALIKE_DATABASE_URL), as the other commands find it.
    with services_for(settings, need_redis=False) as (resolved, _):
        return _run(args, resolved)


def _run(args: argparse.Namespace, settings) -> int:
    engine = _engine(settings)
    if args.action == "status":
        rows = generations(engine)
        if args.json:
            print(json.dumps({"generations": rows}))
        else:
            _print_status(rows)
        return 0
    if args.action == "rollback":
        out = rollback(engine)
        print(json.dumps(out) if args.json else f"rolled back: generation {out['from']} -> {out['to']} "
                                                  f"({out['model_version']})")
        return 0
    from shared.pipeline import Models

    if args.action == "baseline":
        from shared.db import queries
        from shared.db.session import session_scope

        with session_scope(engine) as s:
            active = queries.active_generation(session=s)
            if active is None:
                raise SystemExit("no active generation")
            active_id = active.id
        golden = record_golden(engine, Models.load(settings), active_id)
        out = {"generation": active_id, "golden": golden}
        print(json.dumps(out) if args.json else f"generation {active_id}: {golden}")
        return 0
    if args.skip_golden and not args.force:
        raise SystemExit("--skip-golden needs --force: an unevaluated generation is never promoted by the gate")
    models = None if args.skip_golden else Models.load(settings)
    report = promote(engine, models, generation_id=args.generation, tolerance=args.tolerance, force=args.force)
    if args.json:
        print(json.dumps(report))
    else:
        verdict = "PROMOTED" if report["promoted"] else "REFUSED"
        print(f"{verdict}: generation {report['candidate']} (active was {report['active']}), tolerance "
              f"{report['tolerance']}{' (forced)' if report['forced'] else ''}")
        print(f"{'figure':<10} {'baseline':>9} {'candidate':>9}")
        for f, v in (report.get("figures") or {}).items():
            base = (report.get("baseline") or {}).get(f)
            print(f"{f:<10} {'-' if base is None else f'{base:.3f}':>9} {v:>9.3f}" if f != "n_queries" else
                  f"{f:<10} {'-' if base is None else base:>9} {v:>9}")
        if not report["gate"]["ok"]:
            print(f"gate: {report['gate']['reason']}")
            for f, d in report["gate"]["drops"].items():
                print(f"  {f}: {d['baseline']:.3f} -> {d['candidate']:.3f} (drop {d['drop']:.3f})")
    return 0 if report["promoted"] else 1


if __name__ == "__main__":
    sys.exit(main())


def catch_up_with_checkpoints(settings, *, stop=lambda: False, poll_s: float = 1.0) -> dict[str, Any] | None:
    """`lookalike up` after the checkpoints changed (a pull, a retrain): the active generation was built with other
    networks, so the API (running the new ones) could not search it. Re-index every listing into the generation of the
    current checkpoints, evaluate it on the golden set and activate it. The gate's verdict is printed; on a local
    `up` the new generation is activated even when the gate objects, because the old one cannot answer the new
    networks' queries at all (`lookalike models rollback` plus the old checkpoints returns to it).
    Returns the promotion report, or None when the index is already current."""
    import time

    from shared.checkpoints import model_version_key, network_versions
    from shared.db import queries
    from shared.db.models import AdminJob
    from shared.db.session import session_scope
    from shared.pipeline import Models
    from workers.publish import REINDEX, JobPublisher

    engine = _engine(settings)
    try:
        current = model_version_key(network_versions(settings.models_dir))
        with session_scope(engine) as s:
            active = queries.active_generation(session=s)
            if active is None or active.model_version == current:
                return None
            print(f"the index was built with other networks ({active.model_version});\nre-indexing every listing "
                  f"with the current checkpoints ({current}) ...", flush=True)
            admin = AdminJob(kind="reindex", params={}, status="running")
            s.add(admin)
            s.flush()
            admin_id = admin.id
        JobPublisher.for_settings(settings).send(REINDEX, (admin_id,))
        while not stop():
            with session_scope(engine) as s:
                admin = s.get(AdminJob, admin_id)
                status, progress = admin.status, queries.admin_job_progress(session=s, admin_job=admin)
            if status != "running":
                break
            time.sleep(poll_s)
        if stop():
            return None
        print(f"re-indexed: {progress}", flush=True)
        with session_scope(engine) as s:
            candidate = s.get(AdminJob, admin_id).generation_id
        try:
            report = promote(engine, Models.load(settings), generation_id=candidate, tolerance=DEFAULT_TOLERANCE)
            objection = None if report["promoted"] else (report["gate"].get("reason") or report["gate"])
        except SystemExit as exc:  # the golden set could not be evaluated (e.g. too few sample listings)
            report, objection = {"candidate": candidate}, str(exc)
        if objection is not None:
            print(f"golden-set gate: {objection}; activating anyway (the old generation cannot answer the new "
                  "networks)", flush=True)
            report = {**report, **promote(engine, None, generation_id=candidate, tolerance=DEFAULT_TOLERANCE,
                                          force=True), "gate_objection": objection}
        print(f"generation {report['candidate']} is active (golden figures: {report.get('figures')})", flush=True)
        return report
    finally:
        engine.dispose()
