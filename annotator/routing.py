"""WebSocket routes (docs/ARCHITECTURE.md, "WebSocket")."""

from __future__ import annotations

from typing import Any

from django.urls import path

from annotator.consumers import CaseConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/cases/<int:case_id>/", CaseConsumer.as_asgi()),
]
