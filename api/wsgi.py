"""WSGI entry point (`waitress-serve api.wsgi:app` or gunicorn); needs the LOOKALIKE_* URLs set."""
from __future__ import annotations

from api import create_app

app = create_app()
