"""How training and evaluation records name their data folder: relative to the repository, never a machine path."""
from __future__ import annotations

import os
from pathlib import Path

from shared.config import REPO_ROOT


def data_dir_label(data_dir: str | Path) -> str:
    """`data_dir` as written into manifests, model cards and reports: relative to the repository root
    (`../shared/data` for the team folder), so no record names a path of the machine it was made on."""
    return Path(os.path.relpath(Path(data_dir).resolve(), REPO_ROOT.resolve())).as_posix()
