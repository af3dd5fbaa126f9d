"""WebSocket routes. The live-propagation work adds the per-case consumer here."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
