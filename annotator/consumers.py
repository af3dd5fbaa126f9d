"""The per-case WebSocket consumer (push only: every change goes through REST).

``/ws/cases/<id>/``: the user comes from the session cookie or a token (``backend.ws_auth``) and must be
allowed to see the case exactly as in the REST API (``services.access``). A refused socket is accepted and
at once closed with a reason code the viewer can show (a handshake refusal reaches the browser only as 1006):
``4401`` not signed in, ``4403`` a case of the user's project they may not follow, ``4404`` no such case
or one in another project (existence does not leak outside a project). A refused socket never joins the
case's group, so no event reaches it. After joining the case's group it sends one ``state`` message (current revision, active job, the
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

# Close codes of refused sockets (frontend/src/ws.js shows a message for each and does not reconnect).
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


@database_sync_to_async
def _visible_case(user: Any, case_id: int) -> Any:
    try:
        return access.get_visible_case(user, case_id)
    except NotFound:
        return None


@database_sync_to_async
def _refusal_code(user: Any, case_id: int) -> int:
    return CLOSE_FORBIDDEN if access.is_member_of_case_project(user, case_id) else CLOSE_NOT_FOUND


@database_sync_to_async
def _state(case: Any) -> dict[str, Any]:
    return propagation.case_state(case)


class CaseConsumer(AsyncJsonWebsocketConsumer):
    group_name: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        case_id = int(self.scope["url_route"]["kwargs"]["case_id"])
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_NOT_AUTHENTICATED)
            return
        case = await _visible_case(user, case_id)
        if case is None:
            await self._refuse(await _refusal_code(user, case_id))
            return
        self.group_name = events.case_group(case_id)
        # Join before reading the state: an event racing with the read is then delivered after the state
        # message (never lost); the browser drops slices it already has.
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        await self.send_json({"type": "state", "case": case_id, **(await _state(case))})

    async def _refuse(self, code: int) -> None:
        """Accept, then close with ``code``: only a close after the handshake carries a code to the browser."""
        await self.accept()
        await self.close(code=code)

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
