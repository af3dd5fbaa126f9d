"""A Channels layer stored in a SQLite file, so that separate processes on one machine can talk.

Embedded mode runs the ASGI server (Daphne) and the Celery worker as separate OS processes. The in-memory
layer lives inside one process, so a slice event published by the worker would never reach a WebSocket
consumer in the web process. This layer keeps messages and group memberships in a small SQLite database in
WAL mode (its own file, never the Django database) that every process opens.

Design:

* ``messages(id, channel, route, expires, body)``: one row per queued message. ``route`` is the
  non-local part of the channel name (``"specific.abc!"`` for a process-specific channel, the full name
  otherwise), so one query fetches everything addressed to the specific channels of a process.
* ``group_members(group_name, channel, expires)``: memberships expire after ``group_expiry`` seconds.
* Receiving: one watcher thread per process asks SQLite ``PRAGMA data_version`` (a counter that changes
  when any other connection commits; no table is read) every ``poll_interval`` seconds while traffic
  flows and every ``max_poll_interval`` seconds when idle, and only on a change wakes the poller task of
  each event loop that is receiving. The poller then claims the waited-for rows with
  ``DELETE ... RETURNING`` (atomic, so two processes never receive the same message). Sends made in the
  same process wake the pollers at once. An idle process costs one cheap check per tick and no event-loop
  work; the watcher stops when nothing has been received for a few seconds.
* Every SQLite call runs on one dedicated thread per layer instance (never on the event loop), which owns
  both connections; that makes the layer safe to use from several event loops and threads, e.g. Daphne's
  loop and ``async_to_sync`` calls from Celery tasks. A fork (Celery prefork pool) is detected by pid and
  the child opens its own connections.
* Expiry: messages older than ``expiry`` are never delivered and are purged; like the in-memory layer, a
  channel with an expired message is taken out of all groups (its receiver is gone, e.g. a web process
  died). Capacity: ``send`` raises ``ChannelFull`` when a channel already holds ``capacity`` messages;
  ``group_send`` silently skips full channels (the Channels contract).

Configuration (``CHANNEL_LAYERS["default"]["CONFIG"]``): ``path`` (default ``var/channels.sqlite3``),
``expiry``, ``group_expiry``, ``capacity``, ``channel_capacity``, ``poll_interval``, ``max_poll_interval``,
``active_window`` (seconds at the short interval after the last message).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    route TEXT NOT NULL,
    expires REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_channel ON messages (channel, id);
CREATE INDEX IF NOT EXISTS messages_route ON messages (route, id);
CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires);
CREATE TABLE IF NOT EXISTS group_members (
    group_name TEXT NOT NULL,
    channel TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (group_name, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_channel ON group_members (channel);
"""

_SAFETY_POLL_SECONDS = 1.0
"""A receiving loop looks on its own this often, should a wake-up ever be missed."""

# One message row: (id, channel, expires, packed body).
Row = tuple[int, str, float, bytes]


class _Store:
    """The SQLite side. Every method runs on the layer's single database thread."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._next_cleanup = 0.0

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self._writer is None or self._reader is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; multi-statement writes open BEGIN IMMEDIATE explicitly so the
            # write lock is taken up front instead of failing on upgrade.
            writer = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            writer.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable enough for transient events and avoids an fsync per message.
            writer.execute("PRAGMA synchronous=NORMAL")
            writer.executescript(_SCHEMA)
            # A second connection only reads PRAGMA data_version: it changes whenever another connection
            # (the writer of this process included) commits, which makes idle polls nearly free.
            reader = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            self._writer, self._reader = writer, reader
        return self._writer, self._reader

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        writer, _ = self._connect()
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield writer
        except BaseException:
            writer.execute("ROLLBACK")
            raise
        writer.execute("COMMIT")

    def _maybe_cleanup(self, now: float) -> None:
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + 1.0
        with self._transaction() as db:
            # A channel whose message expired has no live receiver: drop it from every group first.
            db.execute(
                "DELETE FROM group_members WHERE channel IN "
                "(SELECT DISTINCT channel FROM messages WHERE expires <= ?)",
                (now,),
            )
            db.execute("DELETE FROM messages WHERE expires <= ?", (now,))
            db.execute("DELETE FROM group_members WHERE expires <= ?", (now,))

    @staticmethod
    def _insert(
        db: sqlite3.Connection,
        channel: str,
        route: str,
        body: bytes,
        now: float,
        expires: float,
        capacity: int,
    ) -> bool:
        # The capacity check and the insert are one statement, hence atomic across processes.
        cursor = db.execute(
            "INSERT INTO messages (channel, route, expires, body) SELECT ?, ?, ?, ? "
            "WHERE (SELECT COUNT(*) FROM messages WHERE channel = ? AND expires > ?) < ?",
            (channel, route, expires, body, channel, now, capacity),
        )
        return cursor.rowcount == 1

    def send(self, channel: str, route: str, body: bytes, expiry: float, capacity: int) -> bool:
        now = time.time()
        self._maybe_cleanup(now)
        writer, _ = self._connect()
        return self._insert(writer, channel, route, body, now, now + expiry, capacity)

    def group_send(
        self,
        group: str,
        body: bytes,
        expiry: float,
        capacity_of: Callable[[str], int],
        route_of: Callable[[str], str],
    ) -> int:
        now = time.time()
        self._maybe_cleanup(now)
        delivered = 0
        with self._transaction() as db:
            members = db.execute(
                "SELECT channel FROM group_members WHERE group_name = ? AND expires > ?", (group, now)
            ).fetchall()
            for (channel,) in members:
                delivered += self._insert(
                    db, channel, route_of(channel), body, now, now + expiry, capacity_of(channel)
                )
        return delivered

    def group_add(self, group: str, channel: str, group_expiry: float) -> None:
        writer, _ = self._connect()
        writer.execute(
            "INSERT INTO group_members (group_name, channel, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (group_name, channel) DO UPDATE SET expires = excluded.expires",
            (group, channel, time.time() + group_expiry),
        )

    def group_discard(self, group: str, channel: str) -> None:
        writer, _ = self._connect()
        writer.execute("DELETE FROM group_members WHERE group_name = ? AND channel = ?", (group, channel))

    def flush(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM messages")
            db.execute("DELETE FROM group_members")

    def poll(
        self, last_version: int | None, force: bool, routes: Iterable[str], channels: dict[str, int]
    ) -> tuple[int, list[Row]]:
        """Claim the messages for ``routes`` (all of them) and ``channels`` (up to n each).

        Returns the data version seen *before* claiming, so a commit racing with the claim is caught by
        the next poll. Without a change since ``last_version`` (and without ``force``) no table is read.
        """
        writer, reader = self._connect()
        version = reader.execute("PRAGMA data_version").fetchone()[0]
        if version == last_version and not force:
            return version, []
        # No purge here: it would commit, which wakes every watcher again (senders purge instead).
        now = time.time()
        rows: list[Row] = []
        for route in routes:
            rows += writer.execute(
                "DELETE FROM messages WHERE route = ? RETURNING id, channel, expires, body", (route,)
            ).fetchall()
        for channel, wanted in channels.items():
            rows += writer.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE channel = ? AND expires > ? "
                "ORDER BY id LIMIT ?) RETURNING id, channel, expires, body",
                (channel, now, wanted),
            ).fetchall()
        # RETURNING gives no order guarantee; ids are increasing in insertion order.
        rows.sort(key=lambda row: row[0])
        return version, [row for row in rows if row[2] > now]


class _LoopState:
    """What one event loop of this process is waiting for, plus the messages already claimed for it."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.buffers: dict[str, collections.deque[tuple[float, dict[str, Any]]]] = {}
        self.waiters: dict[str, collections.deque[asyncio.Future[dict[str, Any]]]] = {}
        self.wake = asyncio.Event()
        self.dirty = False
        self.version: int | None = None
        self.poller: asyncio.Task[None] | None = None

    def pop_buffered(self, channel: str) -> dict[str, Any] | None:
        buffer = self.buffers.get(channel)
        now = time.time()
        while buffer:
            expires, message = buffer.popleft()
            if expires > now:
                return message
        self.buffers.pop(channel, None)
        return None

    def wanted(self) -> tuple[set[str], dict[str, int]]:
        routes: set[str] = set()
        channels: dict[str, int] = {}
        for channel, futures in self.waiters.items():
            live = sum(1 for future in futures if not future.done())
            if not live:
                continue
            if "!" in channel:
                routes.add(channel[: channel.index("!") + 1])
            else:
                channels[channel] = live
        return routes, channels

    def has_waiters(self) -> bool:
        return any(not future.done() for futures in self.waiters.values() for future in futures)

    def deliver(self, channel: str, expires: float, message: dict[str, Any], capacity: int) -> None:
        for future in self.waiters.get(channel, ()):
            if not future.done():
                future.set_result(message)
                return
        buffer = self.buffers.setdefault(channel, collections.deque())
        if len(buffer) >= capacity:
            # Claimed for a local channel nobody is reading fast enough; same outcome as ChannelFull.
            logger.warning("Dropping a message for %s: its receive buffer is full", channel)
            return
        buffer.append((expires, message))


class SQLiteChannelLayer(BaseChannelLayer):
    """Channel layer shared by the processes of one machine through a SQLite file (see module docstring)."""

    extensions = ["groups", "flush"]

    def __init__(
        self,
        path: str | os.PathLike[str] = "var/channels.sqlite3",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        poll_interval: float = 0.002,
        max_poll_interval: float = 0.01,
        active_window: float = 0.5,
        busy_timeout: float = 10.0,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.group_expiry = group_expiry
        self.path = Path(path).resolve()
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.active_window = active_window
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._pid = -1
        self._reset_for_process()

    # Process and thread plumbing ---------------------------------------------------------------------------

    def _reset_for_process(self) -> None:
        """(Re)create the per-process parts; a forked child must not reuse its parent's thread or sockets."""
        self._pid = os.getpid()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-channel-layer")
        self._store = _Store(self.path, self.busy_timeout)
        self._process_token = secrets.token_hex(6)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._state_counter = 0
        self._watcher: threading.Thread | None = None

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    self._reset_for_process()

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        self._check_process()
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _state(self) -> _LoopState:
        self._check_process()
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.get(loop)
            if state is None:
                self._state_counter += 1
                state = _LoopState(f"{self._process_token}{self._state_counter}")
                self._states[loop] = state
        return state

    def _wake_local_pollers(self) -> None:
        """Make this process's pollers look now instead of at their next tick (same-process latency)."""
        with self._lock:
            items = list(self._states.items())
        for loop, state in items:
            if state.poller is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(state.wake.set)

    @staticmethod
    def _pack(message: dict[str, Any]) -> bytes:
        return msgpack.packb(message, use_bin_type=True)

    @staticmethod
    def _unpack(body: bytes) -> dict[str, Any]:
        return msgpack.unpackb(body, raw=False)

    # Channel layer API -------------------------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` on ``channel``; ``ChannelFull`` when the channel holds ``capacity`` messages."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        stored = await self._run(
            self._store.send,
            channel,
            self.non_local_name(channel),
            self._pack(message),
            self.expiry,
            self.get_capacity(channel),
        )
        if not stored:
            raise ChannelFull(channel)
        self._wake_local_pollers()

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel`` (a normal or a process-specific channel of this loop)."""
        self.require_valid_channel_name(channel)
        state = self._state()
        buffered = state.pop_buffered(channel)
        if buffered is not None:
            return buffered
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        state.waiters.setdefault(channel, collections.deque()).append(future)
        # A new waiter changes what must be claimed: force one query even if the data version is unchanged.
        state.dirty = True
        self._ensure_poller(state)
        state.wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The poller may have handed us a message just before the cancellation: keep it for the next
            # receive instead of losing it.
            if future.done() and not future.cancelled():
                state.buffers.setdefault(channel, collections.deque()).appendleft(
                    (time.time() + self.expiry, future.result())
                )
            raise
        finally:
            futures = state.waiters.get(channel)
            if futures is not None:
                with contextlib.suppress(ValueError):
                    futures.remove(future)
                if not futures:
                    state.waiters.pop(channel, None)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A process-specific channel name, received by the event loop that created it."""
        state = self._state()
        return f"{prefix}.{state.token}!{secrets.token_hex(8)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._run(self._store.group_add, group, channel, self.group_expiry)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._run(self._store.group_discard, group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Queue ``message`` on every channel of ``group``; full channels are skipped."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        delivered = await self._run(
            self._store.group_send,
            group,
            self._pack(message),
            self.expiry,
            self.get_capacity,
            self.non_local_name,
        )
        if delivered:
            self._wake_local_pollers()

    async def flush(self) -> None:
        """Forget every message and group membership (all processes share the file)."""
        await self._run(self._store.flush)
        for state in list(self._states.values()):
            state.buffers.clear()

    async def close(self) -> None:
        """Close this process's SQLite connections; they reopen on the next call."""
        await self._run(self._store.close)

    # Receive loop ------------------------------------------------------------------------------------------

    def _ensure_poller(self, state: _LoopState) -> None:
        if state.poller is None or state.poller.done():
            state.poller = asyncio.get_running_loop().create_task(self._poll_loop(state))
        self._ensure_watcher()

    def _ensure_watcher(self) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="sqlite-channel-layer-watch", daemon=True
                )
                self._watcher.start()

    def _watch(self) -> None:
        """The per-process change detector (see the module docstring)."""
        pid = os.getpid()
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        last_version: int | None = None
        last_change = time.monotonic()
        idle_since: float | None = None
        try:
            while os.getpid() == pid:
                now = time.monotonic()
                with self._lock:
                    targets = [
                        (loop, state) for loop, state in self._states.items() if state.poller is not None
                    ]
                    if not targets:
                        idle_since = idle_since or now
                        if now - idle_since > 5.0:
                            # Deciding under the lock: a receive starting now sees None and starts a new one.
                            self._watcher = None
                            return
                if not targets:
                    time.sleep(self.max_poll_interval)
                    continue
                idle_since = None
                try:
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    logger.warning("SQLite channel layer watcher failed; retrying", exc_info=True)
                    version = None
                if version is not None and version != last_version:
                    if last_version is not None:
                        last_change = now
                        for loop, state in targets:
                            if not loop.is_closed():
                                with contextlib.suppress(RuntimeError):
                                    loop.call_soon_threadsafe(state.wake.set)
                    last_version = version
                # Events come in bursts (one per slice): stay at the short interval for a while after the
                # last change, then back off.
                active = now - last_change < self.active_window
                time.sleep(self.poll_interval if active else self.max_poll_interval)
        finally:
            connection.close()
            with self._lock:
                if self._watcher is threading.current_thread():
                    self._watcher = None

    async def _poll_loop(self, state: _LoopState) -> None:
        try:
            while state.has_waiters():
                # Cleared before the query, so a wake-up that arrives during it is not lost.
                state.wake.clear()
                routes, channels = state.wanted()
                force, state.dirty = state.dirty, False
                try:
                    state.version, rows = await self._run(
                        self._store.poll, state.version, force, routes, channels
                    )
                except sqlite3.OperationalError:
                    # Locked for longer than busy_timeout (a stalled writer): keep the waiters, retry later.
                    logger.warning("SQLite channel layer poll failed; retrying", exc_info=True)
                    state.dirty, rows = True, []
                for _, channel, expires, body in rows:
                    state.deliver(channel, expires, self._unpack(body), self.get_capacity(channel))
                if state.dirty:
                    continue
                self._ensure_watcher()
                # The watcher wakes us on any commit; the timeout is only a safety net.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wake.wait(), _SAFETY_POLL_SECONDS)
        finally:
            state.poller = None
