"""The `lookalike` command lists its subcommands and wires delegated ones to existing modules."""
from __future__ import annotations

import importlib
import subprocess
import sys

from lookalike.cli import DELEGATED, build_parser


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "lookalike", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("up", "down", "migrate", "ingest", "reindex", "train", "evaluate", "bench", "data", "worker",
                "indexd", "api", "config"):
        assert cmd in out.stdout


def test_delegated_modules_exist_with_main():
    for group, entries in DELEGATED.items():
        for name, (module, _) in entries.items():
            mod = importlib.import_module(module)
            assert callable(getattr(mod, "main", None)), f"{group} {name}: {module}.main missing"


def test_unknown_argument_is_an_error():
    parser = build_parser()
    args, rest = parser.parse_known_args(["migrate", "--bogus"])
    assert rest == ["--bogus"]
