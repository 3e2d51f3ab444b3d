"""The index daemon (`lookalike indexd`): load the active generation, follow the change sequence, serve search on loopback.

One process on purpose: the RAM index exists once (several web workers would each hold a copy).
"""
from __future__ import annotations

import logging
import signal
import sys
import time

from shared.config import Settings

logger = logging.getLogger("index_daemon")


def warm_up_all() -> None:
    """Compile (or load from numba's cache) every kernel the daemon uses — search, and the delta and merge
    paths of apply — before serving: a compile holds the GIL and would stall queries for seconds."""
    import numpy as np

    from shared.index.arrays import ItemArrays
    from shared.index.snapshot import IndexSnapshot, warm_up
    from shared.index.refine import warm_up as warm_up_refine

    warm_up()
    warm_up_refine()
    colours = np.full((4, 8), 32, np.uint8)
    snap = IndexSnapshot.build([1, 2, 3, 4], [1, 1, 2, 2], [[1], [1, 2], [], [3]], np.zeros((4, 32), np.uint8),
                               colours, generation=0)
    upsert = ItemArrays.create([5, 2], [1, 2], [[1], [2]], np.ones((2, 32), np.uint8), colours[:2])
    for merge in (False, True):
        nxt = snap.apply(upsert, np.asarray([3], np.int64), merge=merge)
        for cat in (None, 1):
            nxt.search(code=np.zeros(32, np.uint8), colour=colours[0], category_id=cat, attribute_ids=[1, 2], k=3,
                       offset=1, colour_weight=0.3)


def run(settings: Settings) -> int:
    from waitress import create_server

    from index_daemon.holder import SnapshotHolder
    from index_daemon.reloader import Reloader
    from index_daemon.server import create_daemon_app
    from shared.db.session import make_engine
    from shared.index.shards import Shard

    t0 = time.perf_counter()
    warm_up_all()
    logger.info("kernels ready in %.1f s", time.perf_counter() - t0)
    engine = make_engine(settings)
    holder = SnapshotHolder()
    shard = None if settings.index_shard is None else Shard.parse(settings.index_shard)
    holder.state.extra["shard"] = None if shard is None else str(shard)
    reloader = Reloader(engine, holder, poll_s=settings.index_poll_ms / 1000, shard=shard,
                        snapshot_dir=settings.var_dir / "index")
    # Ranking parameters come from the served generation (index_generations.params), not from files on disk.
    app = create_daemon_app(holder)
    server = create_server(app, host=settings.index_host, port=settings.index_port, threads=4, ident="indexd")
    reloader.start()  # loads in the background: /healthz answers at once, /readyz once loaded

    def _stop(*_: object) -> None:
        # Unwind server.run() in the main thread, then stop the reloader and close the pool below.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    logger.info("index daemon on http://%s:%s/ (shard %s)", settings.index_host, settings.index_port,
                shard or "-: the whole index")
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        reloader.stop()
        engine.dispose()
    return 0


if __name__ == "__main__":
    # One entry point per role: `lookalike indexd` (it also starts embedded servers when no URL is set).
    sys.exit("run the index daemon with `lookalike indexd`")
