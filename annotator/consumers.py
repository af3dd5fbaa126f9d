"""The per-case WebSocket consumer (push only: every change goes through REST).

``/ws/cases/<id>/``: the user comes from the session cookie or a token (``backend.ws_auth``) and must be
allowed to see the case exactly as in the REST API (``services.access``); otherwise the handshake is
refused. After joining the case's group it sends one ``state`` message (current revision, active job, the
slices that job has streamed so far), then forwards every event ``annotator.events`` publishes.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotator import events
from annotator.services import access, propagation
from annotator.services.errors import NotFound

logger = logging.getLogger(__name__)


@database_sync_to_async
def _visible_case(user: Any, case_id: int) -> Any:
    try:
        return access.get_visible_case(user, case_id)
    except NotFound:
        return None


@database_sync_to_async
def _state(case: Any) -> dict[str, Any]:
    return propagation.case_state(case)


class CaseConsumer(AsyncJsonWebsocketConsumer):
    group_name: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        case_id = int(self.scope["url_route"]["kwargs"]["case_id"])
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        case = await _visible_case(user, case_id)
        if case is None:
            # Same answer for "no such case" and "not yours": existence does not leak.
            await self.close(code=4404)
            return
        self.group_name = events.case_group(case_id)
        # Join before reading the state: an event racing with the read is then delivered after the state
        # message (never lost); the browser drops slices it already has.
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        await self.send_json({"type": "state", "case": case_id, **(await _state(case))})

    async def disconnect(self, code: int) -> None:
        if self.group_name is not None:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        # Push only: every change goes through the REST API, where validation and permissions live.
        # Frames from the browser (or junk) are ignored rather than parsed.
        return

    async def case_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
