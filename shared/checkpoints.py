"""The one manifest loader every checkpoint goes through: an explicit `version`, the code's taxonomy version, no hash.

A checkpoint folder holds `manifest.json` next to its weights. The manifest must name:
- `version`: a non-empty string chosen by whoever trained it. It keys the index generation, so two different
  checkpoints must never share it and the same checkpoint must keep it (a hash of the manifest would change when a
  figure is recorded into it, silently starting a new generation).
- `taxonomy_version`: the taxonomy it was trained on; it must equal the code's (`shared.taxonomy`). Required for
  networks whose outputs are taxonomy ids (text, attributes, detector); checked when present for features.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# The checkpoint folders under settings.models_dir whose versions key an index generation, by role.
NETWORK_FOLDERS = {"text": "text_category", "attributes": "attributes", "detector": "detector",
                   "features": "features"}


class CheckpointError(ValueError):
    """A checkpoint's manifest breaks the rules above; the message names the folder and the fix."""


def read_manifest(folder: str | Path, *, kind: str, taxonomy: bool = True) -> dict[str, Any]:
    """The manifest of the checkpoint in `folder`, checked. FileNotFoundError when it is missing,
    CheckpointError when `version` is absent/empty or the taxonomy version differs from the code's.
    taxonomy=False (appearance features: their output holds no category or attribute id): the taxonomy version is
    checked only when the manifest names one."""
    from shared.taxonomy import load_taxonomy

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {kind} checkpoint at {folder} ({MANIFEST} missing)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    version = meta.get("version")
    if not isinstance(version, str) or not version.strip():
        raise CheckpointError(f"{kind} checkpoint {folder}: {MANIFEST} has no explicit 'version' (a non-empty string "
                              "naming this checkpoint); add one — versions are never derived from a hash")
    code_tax = load_taxonomy().version
    if (taxonomy or "taxonomy_version" in meta) and meta.get("taxonomy_version") != code_tax:
        raise CheckpointError(f"{kind} checkpoint {folder} was trained on taxonomy {meta.get('taxonomy_version')!r}, "
                              f"code has {code_tax!r}")
    return meta


def network_versions(models_dir: str | Path) -> dict[str, str]:
    """{role: version} of the checkpoints in a models folder, read without loading any weights."""
    root = Path(models_dir)
    return {role: str(read_manifest(root / sub, kind=role, taxonomy=role != "features")["version"])
            for role, sub in NETWORK_FOLDERS.items()}


def model_version_key(versions: dict[str, str]) -> str:
    """The index generation key of a set of network versions (what a query must match)."""
    return ";".join(f"{role}={versions[role]}" for role in ("attributes", "detector", "features", "text"))
