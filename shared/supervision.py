"""The supervisor's report (what `lookalike up` restarted): written by the supervisor, shown by the API's /readyz."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_FILE = "supervisor.json"  # under settings.var_dir


def read_report(var_dir: Path) -> dict[str, Any] | None:
    """The running supervisor's report (restarts per child and embedded server), or None when not under `up`."""
    try:
        report = json.loads((Path(var_dir) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
