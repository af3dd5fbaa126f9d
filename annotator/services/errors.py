"""Errors raised by services. The API maps each class to one HTTP status (annotator/api/exceptions.py)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the service refuses. ``message`` is shown to the user as-is."""

    def __init__(self, message: str, code: str = "invalid", extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra or {}


class InvalidInput(ServiceError):
    """400: the input is wrong (bad value, unknown user, duplicate name...)."""


class Forbidden(ServiceError):
    """403: the user can see the object but may not do this."""


class NotFound(ServiceError):
    """404: the object does not exist or the user may not know that it exists."""


class Conflict(ServiceError):
    """409: the request is based on a state that has changed (stale revision, job already running...)."""


class TooLarge(ServiceError):
    """413: the upload exceeds a configured limit."""
