"""Per-app singletons of the API (settings, database engine, index client, networks) and how a request finds them."""
from __future__ import annotations

import threading
from typing import Any

from flask import current_app

from shared.config import Settings
from shared.db.session import make_engine
from shared.index.shards import index_client
from workers.publish import JobPublisher


class Resources:
    """Per-app singletons, kept in app.extensions["lookalike"]. Networks load on first use (under a lock)
    so that /healthz answers while they load."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.index = index_client(settings.resolved_index_urls)  # one daemon, or a scatter over shards
        self.jobs = JobPublisher.for_settings(settings)  # sends work to the workers by task name
        self._models: Any = None
        self._lock = threading.Lock()

    @property
    def models(self):
        if self._models is None:
            with self._lock:
                if self._models is None:
                    from shared.pipeline import Models

                    models = Models.load(self.settings)
                    self.index.model_version = models.model_version  # every search carries it (version contract)
                    self._models = models
        return self._models


def resources() -> Resources:
    """The current app's singletons (inside a request or app context)."""
    return current_app.extensions["lookalike"]
