"""The `lookalike` command: one entry point for running, loading, training, evaluating and benchmarking."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from shared.config import describe_settings, load_settings
from shared.errors import ConfigError

# Subcommands that hand their remaining arguments to a module's main(argv) (training, evaluation, benches).
DELEGATED: dict[str, dict[str, tuple[str, str]]] = {
    "train": {
        "text": ("training.text.train", "train the text -> category model on the train split"),
        "attributes": ("training.attributes.train", "train the ResCeption/EfficientNet + LSTM attribute generator"),
        "detector": ("training.detector.train", "train the joint Faster R-CNN ROI detector"),
        "ranker": ("training.detector.ranker", "fit the item ranker (which detected item a photo is about)"),
        "features": ("training.retrieval.tune", "fit the appearance-code projection and tune the colour weight"),
        "embedding": ("training.retrieval.embedding", "train the retrieval encoder + 256-bit tanh head (CPU: hours)"),
        "rerank": ("training.retrieval.rerank", "fit the shortlist's 4-bit re-ranking vector (PCA on TRAIN, step on VAL)"),
    },
    "evaluate": {
        "text": ("training.text.evaluate", "category-from-text accuracy / macro-F1"),
        "attributes": ("training.attributes.evaluate", "Table-2 precision / recall / NLL"),
        "detector": ("training.detector.evaluate", "Table-3 mAP at IoU 0.5-0.9, guided vs non-guided"),
        "retrieval": ("training.retrieval.evaluate", "retrieval mAP, P@k, altered-copy P@1 / R@10"),
        "edits": ("training.edits.evaluate", "attribute / colour edits: share satisfying, appearance ratio"),
        "conflicts": ("training.conflicts.evaluate", "seller-intent conflict flag: precision / recall"),
    },
    "bench": {
        "hamming": ("bench.hamming", "popcount kernel vs faiss"),
        "postings": ("bench.postings", "postings strategies at 1M items"),
        "ingest": ("bench.ingest", "listings/s and ms per stage: model pipeline alone and end to end (--device, --batch)"),
        "search": ("bench.search", "end-to-end search latency, daemon load time and RAM"),
        "shards": ("bench.shards", "one index in N shards vs one snapshot: search time, exact merge"),
        "merge": ("bench.merge", "freshness while the delta is merged: inline vs beside the change loop"),
        "bulkload": ("bench.bulkload", "the daemon's bulk load (COPY vs aggregate) and restart from a snapshot file"),
    },
    "data": {
        "report": ("training.data_report", "label coverage of a data folder"),
    },
}


def _delegate(module: str, argv: list[str]) -> int:
    mod = importlib.import_module(module)
    return int(mod.main(argv) or 0)


def _cmd_config(args: argparse.Namespace) -> int:
    """Print every setting with its default and meaning (the .env.example source)."""
    for name, default, doc in describe_settings():
        print(f"# {doc}\n# {name}={default}\n")
    return 0


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", help="start Postgres, Redis, workers, index daemon and API; index the sample catalogue")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="index a folder laid out like ../shared/data instead of the sample")
    src.add_argument("--catalog", metavar="CSV", help="index your own catalogue: a CSV with image,title[,description] "
                                                     "columns (image paths relative to the CSV)")
    src.add_argument("--no-ingest", action="store_true", help="start everything but index nothing new")
    p.add_argument("--limit", type=int, default=None, help="index at most this many rows")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="run N index daemons, each holding 1/N of the listings, on INDEX_PORT .. INDEX_PORT+N-1")
    p.set_defaults(func=_lazy("lookalike.supervisor", "cmd_up"))

    p = sub.add_parser("down", help="stop a running `lookalike up` (and the embedded servers it started)")
    p.set_defaults(func=_lazy("lookalike.supervisor", "cmd_down"))

    p = sub.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    p.add_argument("--revision", default="head")
    p.add_argument("--downgrade", metavar="REV", help="downgrade to REV instead")
    p.set_defaults(func=_lazy("lookalike.supervisor", "cmd_migrate"))

    p = sub.add_parser("ingest", help="load listings into a running system (through the API and workers)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="a folder laid out like ../shared/data")
    src.add_argument("--catalog", metavar="CSV", help="a CSV with image,title[,description] columns")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--wait", action="store_true", help="wait until every listing is processed, with a progress bar")
    p.set_defaults(func=_lazy("lookalike.supervisor", "cmd_ingest"))

    p = sub.add_parser("reindex", help="re-run the pipeline (all, one category, or older than a model version)")
    p.add_argument("--category", help="only listings of this category key")
    p.add_argument("--older-than", metavar="VERSION", help="only listings indexed under another model version")
    p.add_argument("--no-wait", action="store_true", help="return once queued")
    p.set_defaults(func=_lazy("lookalike.supervisor", "cmd_reindex"))

    for role, help_ in (("worker", "run a Celery worker (Procfile: worker)"),
                        ("indexd", "run the index daemon (Procfile: indexd)"),
                        ("api", "run the Flask API with waitress (Procfile: web)")):
        p = sub.add_parser(role, help=help_)
        p.set_defaults(func=_lazy("lookalike.supervisor", f"cmd_{role}"))
        if role == "worker":
            p.add_argument("--batch", type=int, metavar="N", help="jobs each worker process claims and runs as one "
                           "batch (default LOOKALIKE_WORKER_BATCH; 0 = 1 on CPU, 32 on CUDA)")

    p = sub.add_parser("models", add_help=False,
                       help="index generations: status, baseline, promote (golden-set gate), rollback")
    p.set_defaults(delegate="lookalike.models_cmd")

    p = sub.add_parser("config", help="list every LOOKALIKE_* setting")
    p.set_defaults(func=_cmd_config)

    for group, entries in DELEGATED.items():
        gp = sub.add_parser(group, help=f"{group}: " + ", ".join(entries))
        gsub = gp.add_subparsers(dest="target", metavar="TARGET", required=True)
        for name, (module, help_) in entries.items():
            tp = gsub.add_parser(name, help=help_, add_help=False)
            tp.set_defaults(delegate=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # `up` keeps the terminal to its own progress lines (and warnings); everything logged goes to var/logs/up.log.
    console = logging.StreamHandler(sys.stderr)
    if args.command == "up" and not args.verbose:
        console.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[console])
    try:
        if getattr(args, "delegate", None):
            return _delegate(args.delegate, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except ConfigError as exc:
        print(f"lookalike: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
