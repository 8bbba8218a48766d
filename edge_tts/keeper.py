"""Connections to one DashScope WebSocket endpoint: opened, lent to one task at a time, reused
while the server's idle window allows, and retired after any fault."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection

from .config import Secret
from .errors import CloudUnavailable

log = logging.getLogger(__name__)

# A connection idle this close to the server's idle timeout is not trusted for a new task.
_IDLE_MARGIN_S = 5.0


@dataclass
class Lease:
    """A connection lent to one task. The task sets `reusable` once the server has ended the
    task cleanly (task-finished); anything else retires the connection."""

    ws: ClientConnection
    fresh: bool
    reusable: bool = False


@dataclass
class KeeperStats:
    opened: int = 0
    reused: int = 0
    retired: int = 0
    failures: int = 0


@dataclass
class _Idle:
    ws: ClientConnection
    since: float = field(default_factory=time.monotonic)


class ConnectionKeeper:
    """Lends authenticated WebSocket connections to one endpoint, one task at a time."""

    def __init__(
        self,
        url: str,
        api_key: Secret | None,
        *,
        keep_warm: bool = True,
        idle_timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self._api_key = api_key
        self._keep_warm = keep_warm
        self._idle_timeout_s = idle_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: _Idle | None = None
        self.stats = KeeperStats()

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    async def connect(self) -> ClientConnection:
        """Open a new authenticated connection, or raise CloudUnavailable saying why."""
        if self._api_key is None:
            raise CloudUnavailable(
                "no DashScope API key: set dashscope.api_key_file or $DASHSCOPE_API_KEY"
            )
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}"}
        try:
            ws = await websockets.connect(
                self.url,
                additional_headers=headers,
                open_timeout=self._connect_timeout_s,
                max_size=None,
                # DashScope ends idle connections itself; our pings only detect dead peers.
                ping_interval=20,
                ping_timeout=20,
                # A connection retired mid-task may have the server's audio still queued
                # behind the close frame; don't wait long for a polite goodbye.
                close_timeout=1,
            )
        except websockets.InvalidStatus as exc:
            self.stats.failures += 1
            status = exc.response.status_code
            if status in (401, 403):
                raise CloudUnavailable(f"DashScope refused the API key (HTTP {status})") from None
            raise CloudUnavailable(f"DashScope at {self.host} answered HTTP {status}") from None
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            self.stats.failures += 1
            reason = str(exc) or type(exc).__name__
            raise CloudUnavailable(f"cannot reach DashScope at {self.host}: {reason}") from None
        self.stats.opened += 1
        log.debug("connected to %s", self.host)
        return ws

    def _take_idle(self) -> ClientConnection | None:
        idle, self._idle = self._idle, None
        if idle is None:
            return None
        age = time.monotonic() - idle.since
        if idle.ws.state is not websockets.State.OPEN or age > self._idle_timeout_s - _IDLE_MARGIN_S:
            self._retire(idle.ws)
            return None
        return idle.ws

    def _retire(self, ws: ClientConnection) -> None:
        self.stats.retired += 1
        # Closing waits for the peer; a dead peer must not hold up the next announcement.
        asyncio.get_running_loop().create_task(ws.close())

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """A connection ready for a new task; returned for reuse only if the task ended cleanly."""
        ws = self._take_idle()
        lease = Lease(ws, fresh=False) if ws is not None else Lease(await self.connect(), fresh=True)
        if not lease.fresh:
            self.stats.reused += 1
        try:
            yield lease
        finally:
            if lease.reusable and self._keep_warm and lease.ws.state is websockets.State.OPEN:
                self._idle = _Idle(lease.ws)
            else:
                self._retire(lease.ws)

    async def close(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None:
            await idle.ws.close()
