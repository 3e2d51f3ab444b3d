"""The daemon's version contract in-process: a query is answered only by a generation of its networks, with that
generation's ranking parameters; the previously active generation keeps answering its networks after a switch."""
from __future__ import annotations

import numpy as np

from index_daemon.holder import SnapshotHolder
from index_daemon.server import create_daemon_app
from shared.index.snapshot import IndexSnapshot


def _snapshot(generation: int) -> IndexSnapshot:
    rng = np.random.default_rng(generation)
    n = 50
    hist = rng.random((n, 6)).astype(np.float32)
    hist /= hist.sum(axis=1, keepdims=True)
    return IndexSnapshot.build(np.arange(1, n + 1), np.zeros(n, np.int64), [[1]] * n,
                               rng.integers(0, 256, (n, 32), dtype=np.uint8), hist, generation=generation)


def _search(client, version):
    return client.post("/search", json={"model_version": version, "code": "ab" * 32, "colour": [1 / 6] * 6, "k": 5})


def test_queries_are_answered_by_their_networks_generation_only() -> None:
    holder = SnapshotHolder()
    client = create_daemon_app(holder).test_client()
    holder.swap(_snapshot(3), status="ready", generation=3, model_version="A", params={"colour_weight": 0.4})
    r = _search(client, "A")
    assert r.status_code == 200 and r.get_json()["generation"] == 3 and r.get_json()["current"] is True
    assert r.get_json()["weights"]["colour"] == 0.4  # the generation's own parameter, not a file's
    refused = _search(client, "B")
    assert refused.status_code == 409 and refused.get_json()["error"] == "version_mismatch"
    assert refused.get_json()["index_model_version"] == "A"

    holder.keep_previous()  # what the reloader does before swapping another generation in
    holder.swap(_snapshot(4), status="ready", generation=4, model_version="B", params={"colour_weight": 0.2})
    new, old = _search(client, "B").get_json(), _search(client, "A").get_json()
    assert (new["generation"], new["current"], new["weights"]["colour"]) == (4, True, 0.2)
    assert (old["generation"], old["current"], old["weights"]["colour"]) == (3, False, 0.4)
    assert _search(client, "C").status_code == 409
    assert _search(client, None).get_json()["generation"] == 4  # no version named: the active generation

    holder.keep_previous()  # rolled back onto 3: the fresh load replaces the kept copy, B is kept instead
    holder.swap(_snapshot(3), status="ready", generation=3, model_version="A", params={"colour_weight": 0.4})
    assert _search(client, "A").get_json()["current"] is True and _search(client, "B").get_json()["current"] is False
