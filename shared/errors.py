"""Error types shared by workers, API and daemon: what is retried, what is recorded, what is a 400."""
from __future__ import annotations


class AppError(Exception):
    """Base of every error Lookalike raises on purpose."""

    code = "error"


class TransientError(AppError):
    """A hiccup worth retrying (database or broker unavailable, busy device)."""

    code = "transient"


class PermanentError(AppError):
    """Retrying cannot help (undecodable image, dead URL): record it on the listing and stop."""

    code = "permanent"


class InvalidInput(AppError):
    """The caller sent something wrong; the API answers 4xx with this message."""

    code = "invalid_input"


class ImageError(PermanentError, InvalidInput):
    """An image could not be accepted: not an allowed format, truncated, too large, a bomb, ...

    It is both permanent (a worker records it, no retry) and invalid input (the API answers 400).
    """

    code = "bad_image"


class FetchError(PermanentError, InvalidInput):
    """An image URL was refused or could not be fetched (bad scheme, private address, timeout, too big, ...)."""

    code = "bad_url"


class ConfigError(AppError):
    """A LOOKALIKE_* environment variable is missing or malformed; the message names it."""

    code = "config"


class Unavailable(TransientError):
    """A dependency (index daemon, broker, database) is down or still loading; the API answers 503."""

    code = "unavailable"


class VersionMismatch(Unavailable):
    """The index serves another generation than the query's networks encode for (a model switch is under way):
    comparing them would give wrong results, so the API answers 503 with Retry-After instead."""

    code = "version_mismatch"
    retry_after_s = 1
