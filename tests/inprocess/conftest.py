"""The in-process tier: the Flask app built by `create_app` on the real test database, driven through Flask's
test client. No worker, daemon or API process is started, so the tier runs in well under two minutes."""
from __future__ import annotations

import pytest

from api import create_app


@pytest.fixture(scope="session")
def app(settings, engine):
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin_headers(settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token}"}
