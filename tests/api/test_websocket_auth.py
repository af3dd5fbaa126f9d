"""Scripts without a session cookie open case WebSockets with their API token (query string or header)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def annotator_case(team, make_case):
    from rest_framework.authtoken.models import Token

    case = make_case(team.project, assignee=team.annotator)
    return case, Token.objects.create(user=team.annotator).key


async def _open(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """(whether the socket stays open with its state message, the close code of a refusal after the
    handshake; None when refused in the handshake, where a browser sees no code)."""
    from backend.asgi import application

    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    if connected:
        first = await communicator.receive_output(timeout=5)
        connected, code = first["type"] == "websocket.send", first.get("code")
    else:
        code = None
    await communicator.disconnect()
    # The consumer's database calls ran in asgiref's worker thread: leave no connection open there.
    await sync_to_async(connections.close_all)()
    return connected, code


async def _connects(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    return (await _open(path, headers))[0]


async def test_a_token_in_the_query_string_opens_the_case_socket(in_memory_layer, annotator_case):
    case, token = annotator_case

    assert await _connects(f"/ws/cases/{case.pk}/?token={token}", [ORIGIN])


async def test_a_token_in_the_authorization_header_opens_the_case_socket(in_memory_layer, annotator_case):
    case, token = annotator_case

    assert await _connects(f"/ws/cases/{case.pk}/", [ORIGIN, (b"authorization", f"Token {token}".encode())])


async def test_a_wrong_token_is_refused_as_not_signed_in(in_memory_layer, annotator_case):
    case, _ = annotator_case

    assert await _open(f"/ws/cases/{case.pk}/?token=not-a-token", [ORIGIN]) == (False, 4401)


async def test_a_foreign_origin_is_refused_even_with_a_token(in_memory_layer, annotator_case):
    case, token = annotator_case

    assert not await _connects(f"/ws/cases/{case.pk}/?token={token}", [(b"origin", b"https://evil.example")])


async def test_open_case_sockets_show_in_the_active_websockets_metric(in_memory_layer, annotator_case):
    from annotator import observability
    from backend.asgi import application

    case, token = annotator_case
    before = observability.ACTIVE_WEBSOCKETS._value.get()
    communicator = WebsocketCommunicator(application, f"/ws/cases/{case.pk}/?token={token}", headers=[ORIGIN])
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert observability.ACTIVE_WEBSOCKETS._value.get() == before + 1
    await communicator.disconnect()
    await sync_to_async(connections.close_all)()
    assert observability.ACTIVE_WEBSOCKETS._value.get() == before
