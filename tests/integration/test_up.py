"""The README's main command, as a user runs it: `lookalike up` starts everything on embedded servers,
indexes the sample catalogue, serves the storefront, stops cleanly and reuses its state next time."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from shared.config import REPO_ROOT
from lookalike.services import free_port

pytestmark = pytest.mark.integration


def _run_up(env: dict[str, str], limit: int, *extra: str) -> tuple[subprocess.Popen, str, float]:
    # Started with SIGINT ignored, as a shell's background job is: Ctrl-C / kill -INT must stop it all the same.
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "up", "--limit", str(limit), *extra], env=env,
                            cwd=REPO_ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t0 = time.monotonic()
    out = []
    for line in proc.stdout:
        out.append(line)
        if "Search at:" in line:
            return proc, "".join(out), time.monotonic() - t0
        if time.monotonic() - t0 > 600:
            break
    proc.kill()
    raise AssertionError("no search URL printed:\n" + "".join(out)[-3000:])


def _wait_no_leftovers(var_dir, timeout_s: float = 20) -> None:
    """Every process of the run gone (the embedded servers exit a moment after `up` reports them stopped)."""
    deadline = time.monotonic() + timeout_s
    while (left := _leftovers(var_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []


def _leftovers(var_dir) -> list[str]:
    """Processes still tied to this run: servers with the folder on their command line, or any process whose
    environment names it (our worker, daemon and API children)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if str(var_dir) in cmd or p.environ().get("LOOKALIKE_VAR_DIR") == str(var_dir):
                found.append(f"{p.pid} {cmd}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _up_env(var_dir) -> dict[str, str]:
    """A user's environment (no LOOKALIKE_* of ours) with this run's folder and free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update({"LOOKALIKE_VAR_DIR": str(var_dir), "LOOKALIKE_API_PORT": str(free_port()),
                "LOOKALIKE_INDEX_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"})
    if os.environ.get("LOOKALIKE_MODELS_DIR"):
        env["LOOKALIKE_MODELS_DIR"] = os.environ["LOOKALIKE_MODELS_DIR"]
    return env


@pytest.mark.skipif(bool(os.environ.get("TEST_LOOKALIKE_DATABASE_URL")), reason="runs on embedded servers only")
def test_up_indexes_serves_stops_and_reuses_state(server_tmp_path):
    var_dir = server_tmp_path / "var"
    env = _up_env(var_dir)
    proc, out, first_s = _run_up(env, limit=12)
    try:
        url = out.rsplit("Search at:", 1)[1].split()[0]
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        photo = (REPO_ROOT / "sample" / "images").glob("*.jpg").__next__().read_bytes()
        r = requests.post(f"{url.rstrip('/')}/v1/search", files={"image": ("q.jpg", photo)}, timeout=60)
        assert r.status_code == 200 and r.json()["index"]["items"] == 12
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest[-2000:]
    assert "stopped" in rest
    _wait_no_leftovers(var_dir)
    # Second run: same data folder, nothing to re-index.
    proc, out, second_s = _run_up(env, limit=12)
    try:
        url = out.rsplit("Search at:", 1)[1].split()[0]
        ready = requests.get(f"{url.rstrip('/')}/readyz", timeout=10).json()
        assert ready["checks"]["index"]["items"] == 12
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert _leftovers(var_dir) == []
    # Third run after a checkpoint changed (a pull, a retrain): `up` re-indexes into the new networks' generation
    # and activates it, so searches (encoded by the new networks) work again.
    models = server_tmp_path / "models"
    shutil.copytree(Path(env.get("LOOKALIKE_MODELS_DIR") or REPO_ROOT / "models"), models)
    manifest = models / "text_category" / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["version"] = f"{meta['version']}-retrained"
    manifest.write_text(json.dumps(meta))
    proc, out, _ = _run_up({**env, "LOOKALIKE_MODELS_DIR": str(models)}, limit=12)
    try:
        assert "re-indexing every listing" in out and "is active" in out, out[-3000:]
        url = out.rsplit("Search at:", 1)[1].split()[0].rstrip("/")
        photo = (REPO_ROOT / "sample" / "images").glob("*.jpg").__next__().read_bytes()
        r = requests.post(f"{url}/v1/search", files={"image": ("q.jpg", photo)}, timeout=60)
        assert r.status_code == 200 and r.json()["index"]["items"] == 12, r.text[:500]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert _leftovers(var_dir) == []


@pytest.mark.skipif(bool(os.environ.get("TEST_LOOKALIKE_DATABASE_URL")), reason="runs on embedded servers only")
def test_up_with_two_shards_splits_the_index(server_tmp_path):
    """`lookalike up --shards 2`: two index daemons, each holding its half, and an API that searches both."""
    var_dir = server_tmp_path / "var"
    env = _up_env(var_dir)
    proc, out, _ = _run_up(env, 6, "--shards", "2")
    try:
        url = out.rsplit("Search at:", 1)[1].split()[0].rstrip("/")
        deadline = time.monotonic() + 20  # the daemons apply the last listings within a few polls
        while True:
            ready = requests.get(f"{url}/readyz", timeout=10).json()
            if ready["checks"]["index"].get("items") == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        shards = ready["checks"]["index"]["shards"]
        assert [s["shard"] for s in shards] == ["0/2", "1/2"] and ready["checks"]["index"]["items"] == 6, ready
        assert all(s["items"] > 0 for s in shards), shards  # each daemon holds its part, none holds all
        photo = (REPO_ROOT / "sample" / "images").glob("*.jpg").__next__().read_bytes()
        r = requests.post(f"{url}/v1/search", files={"image": ("q.jpg", photo)}, data={"k": 6}, timeout=60)
        assert r.status_code == 200, r.text
        index = r.json()["index"]
        assert index["items"] == 6 and index["shards"] == {"count": 2, "answered": [0, 1], "missing": [],
                                                           "partial": False}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert _leftovers(var_dir) == []
