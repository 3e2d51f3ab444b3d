"""`python -m lookalike` = the `lookalike` command."""
from __future__ import annotations

import sys

from lookalike.cli import main

sys.exit(main())
