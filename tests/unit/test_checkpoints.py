"""The one manifest rule set: explicit version, the code's taxonomy, no hash fallback; the shipped checkpoints obey it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.checkpoints import CheckpointError, model_version_key, network_versions, read_manifest
from shared.config import load_settings
from shared.taxonomy import load_taxonomy


def _write(folder: Path, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_missing_or_empty_version_is_refused(tmp_path: Path) -> None:
    tax = load_taxonomy().version
    with pytest.raises(CheckpointError, match="no explicit 'version'"):
        read_manifest(_write(tmp_path / "a", taxonomy_version=tax), kind="detector")
    with pytest.raises(CheckpointError, match="no explicit 'version'"):
        read_manifest(_write(tmp_path / "b", taxonomy_version=tax, version="  "), kind="detector")
    assert read_manifest(_write(tmp_path / "c", taxonomy_version=tax, version="d1"), kind="detector")["version"] == "d1"


def test_taxonomy_mismatch_is_refused_and_features_may_omit_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="taxonomy"):
        read_manifest(_write(tmp_path / "a", taxonomy_version="1999.1", version="x"), kind="attributes")
    with pytest.raises(CheckpointError, match="taxonomy"):
        read_manifest(_write(tmp_path / "b", version="x"), kind="text")
    assert read_manifest(_write(tmp_path / "c", version="f1"), kind="features", taxonomy=False)["version"] == "f1"
    with pytest.raises(CheckpointError, match="taxonomy"):
        read_manifest(_write(tmp_path / "d", version="f1", taxonomy_version="1999.1"), kind="features", taxonomy=False)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "none", kind="detector")


def test_shipped_checkpoints_name_their_versions() -> None:
    versions = network_versions(load_settings().models_dir)
    assert set(versions) == {"text", "attributes", "detector", "features"} and all(versions.values())
    key = model_version_key(versions)
    assert key.startswith("attributes=") and f"features={versions['features']}" in key
