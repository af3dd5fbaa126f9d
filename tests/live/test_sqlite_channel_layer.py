"""The SQLite channel layer carries events between OS processes (embedded mode: Daphne + Celery worker)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from channels.exceptions import ChannelFull

from backend.sqlite_channel_layer import SQLiteChannelLayer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def layer_path(tmp_path: Path) -> Path:
    return tmp_path / "channels.sqlite3"


@pytest.fixture
def layer(layer_path: Path) -> SQLiteChannelLayer:
    return SQLiteChannelLayer(path=layer_path)


async def receive_or_none(layer: SQLiteChannelLayer, channel: str, timeout: float = 0.3) -> dict | None:
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout)
    except TimeoutError:
        return None


@pytest.mark.asyncio
async def test_a_message_sent_on_a_channel_is_received_once_in_order(layer):
    await layer.send("work", {"type": "job", "n": 1, "blob": b"\x00\x01"})
    await layer.send("work", {"type": "job", "n": 2})
    first = await asyncio.wait_for(layer.receive("work"), 2)
    second = await asyncio.wait_for(layer.receive("work"), 2)
    assert first == {"type": "job", "n": 1, "blob": b"\x00\x01"}
    assert second["n"] == 2
    assert await receive_or_none(layer, "work") is None


@pytest.mark.asyncio
async def test_a_receiver_waiting_before_the_send_gets_the_message(layer):
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.05)
    await layer.send(channel, {"type": "hello"})
    assert (await asyncio.wait_for(waiting, 2))["type"] == "hello"


@pytest.mark.asyncio
async def test_group_send_reaches_every_member_and_not_a_discarded_one(layer):
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("case_1", first)
    await layer.group_add("case_1", second)
    await layer.group_send("case_1", {"type": "slice", "z": 3})
    assert (await asyncio.wait_for(layer.receive(first), 2))["z"] == 3
    assert (await asyncio.wait_for(layer.receive(second), 2))["z"] == 3

    await layer.group_discard("case_1", second)
    await layer.group_send("case_1", {"type": "slice", "z": 4})
    assert (await asyncio.wait_for(layer.receive(first), 2))["z"] == 4
    assert await receive_or_none(layer, second) is None


@pytest.mark.asyncio
async def test_messages_for_another_case_group_do_not_leak(layer):
    mine = await layer.new_channel()
    await layer.group_add("case_1", mine)
    await layer.group_send("case_2", {"type": "slice"})
    assert await receive_or_none(layer, mine) is None


@pytest.mark.asyncio
async def test_an_expired_message_is_never_delivered_and_its_channel_leaves_groups(layer_path):
    layer = SQLiteChannelLayer(path=layer_path, expiry=0.2)
    dead = await layer.new_channel()
    await layer.group_add("case_1", dead)
    await layer.group_send("case_1", {"type": "slice", "z": 1})
    await asyncio.sleep(0.3)
    # Any later call purges: the dead receiver is removed from the group, its message dropped.
    await layer.send("other", {"type": "tick"})
    await asyncio.sleep(1.1)  # the purge runs at most once a second
    await layer.send("other", {"type": "tick"})
    assert await receive_or_none(layer, dead) is None
    await layer.group_send("case_1", {"type": "slice", "z": 2})
    assert await receive_or_none(layer, dead) is None


@pytest.mark.asyncio
async def test_group_membership_expires(layer_path):
    layer = SQLiteChannelLayer(path=layer_path, group_expiry=0.2)
    channel = await layer.new_channel()
    await layer.group_add("case_1", channel)
    await asyncio.sleep(0.3)
    await layer.group_send("case_1", {"type": "slice"})
    assert await receive_or_none(layer, channel) is None


@pytest.mark.asyncio
async def test_a_full_channel_refuses_send_but_group_send_skips_it(layer_path):
    layer = SQLiteChannelLayer(path=layer_path, capacity=2, channel_capacity={"big*": 5})
    await layer.send("small", {"n": 1})
    await layer.send("small", {"n": 2})
    with pytest.raises(ChannelFull):
        await layer.send("small", {"n": 3})
    for n in range(5):
        await layer.send("big.one", {"n": n})
    with pytest.raises(ChannelFull):
        await layer.send("big.one", {"n": 5})

    await layer.group_add("g", "small")
    await layer.group_send("g", {"n": 99})  # must not raise
    received = [(await asyncio.wait_for(layer.receive("small"), 2))["n"] for _ in range(2)]
    assert received == [1, 2]
    assert await receive_or_none(layer, "small") is None


@pytest.mark.asyncio
async def test_flush_forgets_messages_and_groups(layer):
    channel = await layer.new_channel()
    await layer.group_add("case_1", channel)
    await layer.send("work", {"n": 1})
    await layer.flush()
    await layer.group_send("case_1", {"n": 2})
    assert await receive_or_none(layer, "work") is None
    assert await receive_or_none(layer, channel) is None


@pytest.mark.asyncio
async def test_a_cancelled_receive_does_not_swallow_the_next_message(layer):
    channel = await layer.new_channel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.05)
    await layer.send(channel, {"n": 1})
    assert (await asyncio.wait_for(layer.receive(channel), 2))["n"] == 1


SENDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from backend.sqlite_channel_layer import SQLiteChannelLayer

    async def main(path, count):
        layer = SQLiteChannelLayer(path=path)
        for n in range(count):
            await layer.group_send("case_7", {"type": "slice", "n": n, "sent": time.time()})
            await asyncio.sleep(0.02)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)

RECEIVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from backend.sqlite_channel_layer import SQLiteChannelLayer

    async def main(path):
        layer = SQLiteChannelLayer(path=path)
        got = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive("jobs"), 1.5)
            except TimeoutError:
                break
            got.append(message["n"])
        print(json.dumps(got))

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.asyncio
async def test_a_group_send_from_another_process_arrives_quickly(layer):
    channel = await layer.new_channel()
    await layer.group_add("case_7", channel)
    count = 50
    sender = subprocess.Popen([sys.executable, "-c", SENDER, str(layer.path), str(count)], cwd=REPO)
    latencies = []
    try:
        for expected in range(count):
            message = await asyncio.wait_for(layer.receive(channel), 15)
            latencies.append(time.time() - message["sent"])
            assert message["n"] == expected
    finally:
        assert sender.wait(timeout=30) == 0
    latencies_ms = sorted(1000 * value for value in latencies)
    print(
        f"\ncross-process group_send -> receive over {count} messages: mean {statistics.mean(latencies_ms):.1f} ms, "
        f"median {statistics.median(latencies_ms):.1f} ms, max {latencies_ms[-1]:.1f} ms"
    )
    assert statistics.median(latencies_ms) < 50


@pytest.mark.asyncio
async def test_two_processes_reading_one_channel_never_get_the_same_message(layer):
    # given: a receiver in another process competing with this one
    other = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(layer.path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    await asyncio.sleep(0.5)
    # when: 40 messages are sent while both read
    mine = []
    for n in range(40):
        await layer.send("jobs", {"n": n})
    while (message := await receive_or_none(layer, "jobs", timeout=1.0)) is not None:
        mine.append(message["n"])
    theirs = json.loads(other.communicate(timeout=30)[0])
    # then: every message went to exactly one of them
    assert sorted(mine + theirs) == list(range(40))


IDLE_SENDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from backend.sqlite_channel_layer import SQLiteChannelLayer

    async def main(path):
        layer = SQLiteChannelLayer(path=path)
        await layer.group_send("nobody", {"type": "warm-up"})  # opens the connections
        for n in range(3):
            await asyncio.sleep(1.2)  # longer than the receiver's active window: it is idle again
            await layer.group_send("case_9", {"type": "slice", "n": n, "sent": time.time()})

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.asyncio
async def test_an_idle_receiver_still_hears_another_process_within_a_few_ms(layer):
    channel = await layer.new_channel()
    await layer.group_add("case_9", channel)
    sender = subprocess.Popen([sys.executable, "-c", IDLE_SENDER, str(layer.path)], cwd=REPO)
    latencies = []
    try:
        for _ in range(3):
            message = await asyncio.wait_for(layer.receive(channel), 15)
            latencies.append(1000 * (time.time() - message["sent"]))
    finally:
        assert sender.wait(timeout=30) == 0
    print(f"\ncross-process latency after 1.2 s idle: {', '.join(f'{value:.1f}' for value in latencies)} ms")
    assert max(latencies) < 100
