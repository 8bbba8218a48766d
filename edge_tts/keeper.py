"""Warm connections to one DashScope WebSocket endpoint.

While `keep_warm` is on, `ConnectionKeeper.run()` holds one open, authenticated connection
from start-up on and renews it before the server's idle window closes it: it opens the new
connection first and only then retires the old one (make before break), so a connection is
ready at every moment. Tasks borrow it with `lease()`, one at a time. A connection that saw
anything but a clean `task-finished` is retired at once and replaced. Reconnects back off
with jitter; at most one handshake is in flight; a refused key is reported once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection

from .backoff import Backoff
from .config import DashscopeConfig
from .errors import CloudUnavailable
from .secret import Secret
from .trust import cloud_context, untrusted

log = logging.getLogger(__name__)


def _proxy() -> Literal[True] | None:
    """A proxy named in the environment (`https_proxy`, `no_proxy`, ... as curl reads them) is
    used, found by websockets' own lookup; with none named, no lookup: it would load
    urllib.request (with http.client and email: 1.5 MiB an idle Pi would keep) to find none."""
    return True if any(name.lower().endswith("_proxy") for name in os.environ) else None


class _HideAuthorization(logging.Filter):
    """websockets logs request headers at debug level; the key must never be among them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Authorization" in str(record.msg) or any(
            "Authorization" in str(arg) for arg in (record.args or ())
        ):
            record.msg, record.args = "> Authorization: Bearer ********", None
        return True


# The websockets library's log for our connections, with the key masked.
_ws_log = logging.getLogger(f"{__name__}.websocket")
_ws_log.addFilter(_HideAuthorization())

# After a refused key, try again this rarely: the user has to change something first.
_REFUSED_RETRY_S = 300.0


@dataclass
class Lease:
    """A connection lent to one task. The task sets `reusable` once the server has ended the
    task cleanly (task-finished); anything else retires the connection."""

    ws: ClientConnection
    fresh: bool  # the task waited for this connection's handshake
    reusable: bool = False


@dataclass
class KeeperStats:
    """What keeping warm has cost since start, published on `<prefix>/<device>/stats`."""

    opened: int = 0  # handshakes that succeeded
    renewals: int = 0  # idle connections replaced before the server's idle timeout
    reused: int = 0  # tasks that started on a warm connection
    waited: int = 0  # tasks that had to wait for a handshake
    extra: int = 0  # tasks given a connection of their own, the kept one being lent
    retired: int = 0  # connections closed by us (faults, renewals, keep_warm off)
    lost: int = 0  # idle connections the server or network closed under us
    failures: int = 0  # handshakes that failed
    task_failures: int = 0  # tasks the service failed or refused (a key refused at task level)
    last_task_error: str | None = None  # kept: a connection that opens fine does not clear it
    warm: bool = False  # a connection is ready now
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Ready:
    ws: ClientConnection
    since: float = field(default_factory=time.monotonic)  # last traffic: opened or task ended


@dataclass(frozen=True)
class ConnectionSettings:
    """How the connections to a DashScope endpoint are kept; one value, built once from the
    config and handed whole to every keeper."""

    keep_warm: bool = True  # a connection ready before it is needed, renewed while idle
    idle_timeout_s: float = 60.0  # the service closes a connection unused this long
    connect_timeout_s: float = 5.0  # a handshake (and a session's set-up) slower fails

    @classmethod
    def of(cls, ds: DashscopeConfig, *, keep_warm: bool | None = None) -> ConnectionSettings:
        return cls(
            ds.keep_warm if keep_warm is None else keep_warm,
            ds.idle_timeout_s,
            ds.connect_timeout_s,
        )


class ConnectionKeeper:
    """Lends authenticated WebSocket connections to one endpoint, one task at a time."""

    def __init__(
        self,
        url: str,
        api_key: Secret | None,
        settings: ConnectionSettings | None = None,
        *,
        on_change: Callable[[KeeperStats], None] | None = None,
        prepare: Callable[[ClientConnection], Awaitable[None]] | None = None,
    ) -> None:
        settings = settings or ConnectionSettings()
        self.url = url
        self.settings = settings
        self._prepare = prepare  # readies a new connection for its first task (a session)
        self._api_key = api_key
        self._keep_warm = settings.keep_warm
        self._idle_timeout_s = idle_timeout_s = settings.idle_timeout_s
        self._connect_timeout_s = settings.connect_timeout_s
        self._on_change = on_change
        # Renew this long before the server's idle timeout; never lend a connection this
        # close to it (a run-task then resets the server's timer well in time).
        self._renew_margin_s = min(5.0, idle_timeout_s / 4)
        self._lend_margin_s = min(1.0, idle_timeout_s / 10)
        self._ready: _Ready | None = None
        self._leased = False
        self._handshake: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()
        self._warm = asyncio.Event()
        self._refused = False
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = KeeperStats()

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    # --- opening -----------------------------------------------------------------------

    async def connect(self) -> ClientConnection:
        """Open a new authenticated connection, or raise CloudUnavailable saying why."""
        if self._api_key is None:
            raise CloudUnavailable(
                "no DashScope API key: set dashscope.api_key_file or $DASHSCOPE_API_KEY",
                refused=True,
            )
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}"}
        try:
            tls = await cloud_context() if urlsplit(self.url).scheme == "wss" else None
        except OSError as exc:  # ssl.SSLError among them
            reason = f"cannot set up TLS for DashScope: {exc}"
            raise self._failed(CloudUnavailable(reason)) from None
        try:
            ws = await websockets.connect(
                self.url,
                ssl=tls,
                additional_headers=headers,
                open_timeout=self._connect_timeout_s,
                max_size=None,
                # PCM hardly compresses; deflating it costs CPU (and latency) at both ends.
                compression=None,
                # DashScope ends idle connections itself; our pings only detect dead peers.
                ping_interval=20,
                ping_timeout=20,
                # A connection retired mid-task may have the server's audio still queued
                # behind the close frame; don't wait long for a polite goodbye.
                close_timeout=1,
                logger=_ws_log,
                proxy=_proxy(),
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise self._failed(
                    CloudUnavailable(f"DashScope refused the API key (HTTP {status})", refused=True)
                ) from None
            raise self._failed(
                CloudUnavailable(f"DashScope at {self.host} answered HTTP {status}")
            ) from None
        except ssl.SSLCertVerificationError as exc:
            # Before any HTTP: the key was not sent.
            names = "is dashscope.region or the endpoint's URL right? is something in between?"
            reason = untrusted(f"DashScope at {self.host}", exc, names=names)
            raise self._failed(CloudUnavailable(reason)) from None
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            reason = str(exc) or type(exc).__name__
            raise self._failed(
                CloudUnavailable(f"cannot reach DashScope at {self.host}: {reason}")
            ) from None
        if self._prepare is not None:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    await self._prepare(ws)
            except (CloudUnavailable, TimeoutError, websockets.ConnectionClosed) as exc:
                await ws.close()
                if not isinstance(exc, CloudUnavailable):
                    exc = CloudUnavailable(
                        f"DashScope at {self.host} did not set up the session "
                        f"({type(exc).__name__})"
                    )
                raise self._failed(exc) from None
        self.stats.opened += 1
        if self._refused:
            log.info("DashScope accepts us again")
            self._refused = False
        self.stats.last_error = None
        log.debug("connected to %s", self.host)
        return ws

    def _failed(self, exc: CloudUnavailable) -> CloudUnavailable:
        self.stats.failures += 1
        self.stats.last_error = exc.reason
        if exc.refused:
            # Said once, loudly; repeating it every retry helps nobody.
            if not self._refused:
                log.error("%s: %s", exc.reason, exc.hint)
            self._refused = True
        self._notify()
        return exc

    def _open(self) -> asyncio.Future[None]:
        """The one handshake in flight, started if none is: its connection goes to `_ready`."""
        if self._handshake is None:

            async def handshake() -> None:
                try:
                    self._put_ready(await self.connect())
                finally:
                    self._handshake = None

            self._handshake = asyncio.ensure_future(handshake())
            # Whoever awaits it sees the error; this only keeps asyncio from warning when
            # nobody does (the background loop may have been cancelled meanwhile).
            self._handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._handshake

    # --- the ready connection ----------------------------------------------------------

    def _put_ready(self, ws: ClientConnection) -> None:
        """Hold `ws` as the ready connection, retiring the one it replaces."""
        current = self._ready
        if current is not None:
            self._retire(current.ws)
        self._ready = _Ready(ws)
        self._notify()

    def _usable(self, ready: _Ready) -> bool:
        age = time.monotonic() - ready.since
        return (
            ready.ws.state is websockets.State.OPEN
            and age < self._idle_timeout_s - self._lend_margin_s
        )

    def _take_ready(self) -> ClientConnection | None:
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        if not self._usable(ready):
            if ready.ws.state is not websockets.State.OPEN:
                self.stats.lost += 1
            self._retire(ready.ws)
            self._notify()
            return None
        return ready.ws

    def _retire(self, ws: ClientConnection) -> None:
        self.stats.retired += 1
        # Closing waits for the peer; a dead peer must not hold up the next announcement.
        task = asyncio.get_running_loop().create_task(ws.close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def task_failed(self, reason: str) -> None:
        """A task on one of our connections failed at the service (task-failed, a session
        error): counted, and its reason shown as the last error."""
        self.stats.task_failures += 1
        self.stats.last_task_error = reason
        self._notify()

    def _notify(self) -> None:
        self.stats.warm = self._ready is not None
        if self.stats.warm:
            self._warm.set()
        else:
            self._warm.clear()
        self._changed.set()
        if self._on_change is not None:
            self._on_change(self.stats)

    # --- lending -----------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """A connection ready for a new task; kept for reuse only if the task ended cleanly.
        While the kept connection is lent, another task (a second Wyoming client) gets a
        connection of its own, closed when it ends."""
        if self._leased:
            self.stats.extra += 1
            ws = await self.connect()
            try:
                yield Lease(ws, fresh=True)
            finally:
                await ws.close()
            return
        self._leased = True
        try:
            lease = await self._borrow()
            try:
                yield lease
            finally:
                if lease.reusable and self._keep_warm and lease.ws.state is websockets.State.OPEN:
                    # Its idle timer on the server just restarted: it has the most time left.
                    self._put_ready(lease.ws)
                else:
                    self._retire(lease.ws)
                    self._notify()  # wakes the background loop to replace it at once
        finally:
            self._leased = False

    async def _borrow(self) -> Lease:
        ws = self._take_ready()
        if ws is not None:
            self.stats.reused += 1
            return Lease(ws, fresh=False)
        self.stats.waited += 1
        while True:
            await asyncio.shield(self._open())
            ws = self._take_ready()
            if ws is not None:
                return Lease(ws, fresh=True)

    # --- keeping warm ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep one connection ready until cancelled or closed (a no-op when keep_warm is
        off)."""
        if not self._keep_warm:
            return
        backoff = Backoff(start=0.5, cap=30.0)
        while not self._closed:
            self._changed.clear()
            ready = self._ready
            if ready is None:
                if self._leased and self._handshake is None:
                    await self._changed.wait()  # a task holds the connection
                    continue
                try:
                    await asyncio.shield(self._open())
                    backoff.reset()
                except CloudUnavailable as exc:
                    delay = _REFUSED_RETRY_S if exc.refused else backoff.next()
                    log.log(
                        logging.DEBUG if exc.refused else logging.WARNING,
                        "%s; keeper retries in %.1f s",
                        exc.reason,
                        delay,
                    )
                    await self._sleep_unless_ready(delay)
                continue
            renew_at = ready.since + self._idle_timeout_s - self._renew_margin_s
            closed = asyncio.ensure_future(ready.ws.wait_closed())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait(
                    {closed, changed},
                    timeout=max(0.0, renew_at - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                closed.cancel()
                changed.cancel()
            if self._ready is not ready:
                continue  # taken by a task or replaced meanwhile
            if ready.ws.state is not websockets.State.OPEN:
                log.info("warm connection to %s closed by the peer; reconnecting", self.host)
                self._ready = None
                self.stats.lost += 1
                self._retire(ready.ws)
                self._notify()
                continue
            if time.monotonic() >= renew_at:
                await self._renew(ready, backoff)

    async def _renew(self, old: _Ready, backoff: Backoff) -> None:
        """Make before break: a new connection first, then the old one goes."""
        try:
            await asyncio.shield(self._open())
        except CloudUnavailable as exc:
            delay = backoff.next()
            log.warning(
                "renewing the warm connection failed (%s); retrying in %.1f s", exc.reason, delay
            )
            await self._sleep_unless_ready(delay)
            if self._ready is old and not self._usable(old):
                self._ready = None
                self._retire(old.ws)
                self._notify()
            return
        backoff.reset()
        self.stats.renewals += 1
        log.debug("warm connection to %s renewed", self.host)
        self._notify()

    async def _sleep_unless_ready(self, timeout: float) -> None:
        """Back off, but stop at once if a task's own handshake got a connection ready."""
        start = self._ready
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._ready is None or self._ready is start:
                    self._changed.clear()
                    await self._changed.wait()

    async def wait_warm(self) -> None:
        """Return once a connection is ready for the next task."""
        await self._warm.wait()

    async def close(self) -> None:
        """Close the kept connection; run() ends (at once, or after a retry's wait)."""
        self._closed = True
        self._changed.set()
        if self._handshake is not None:
            # Cancelled mid-handshake, a connection may take its time to give up: it is not
            # waited for long (shutdown has a second or two in all).
            self._handshake.cancel()
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(0.2):
                    await self._handshake
        ready, self._ready = self._ready, None
        if ready is not None:
            await ready.ws.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
