"""The one place where service errors become HTTP responses ``{"detail", "code", ...}``."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from annotator.services.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceError, TooLarge

STATUS_BY_ERROR: dict[type[ServiceError], int] = {
    InvalidInput: status.HTTP_400_BAD_REQUEST,
    Forbidden: status.HTTP_403_FORBIDDEN,
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        code = next((value for cls, value in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 400)
        set_rollback()
        return Response({"detail": exc.message, "code": exc.code, **exc.extra}, status=code)
    return drf_exception_handler(exc, context)
