"""Living under systemd: readiness, status and watchdog notifications, and logging to the
journal with priorities and fields. Every part is a no-op off systemd.

Notifications go over $NOTIFY_SOCKET directly (the protocol is one datagram), from a
non-blocking socket: a supervisor that does not read them (its queue full) costs a dropped
notification and one log line, never a blocked event loop. (libsystemd's sd_notify sends on
a blocking socket, so it is not used for this.) systemd-python (the `systemd` extra) is used
for journal fields when installed; without it, log lines to a journal stream carry their
priority as a `<N>` prefix, which journald reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

try:  # the optional extra
    from systemd import journal as _sd_journal  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the install
    _sd_journal = None


class Notifier:
    """sd_notify for this process: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        owned = pid is None or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 1e6 if usec and usec.isdigit() and owned else None
        self._status: str | None = None
        self._socket: socket.socket | None = None
        self._dropping = False  # notifications are being dropped: said once

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send one notification, never waiting: dropped (and said once) if it cannot go."""
        if not self._address:
            return
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message, self._target())
        except BlockingIOError:
            if not self._dropping:
                log.warning(
                    "systemd is not reading notifications (its queue is full); "
                    "dropping them until it does"
                )
            self._dropping = True
            return
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return
        if self._dropping:
            log.info("systemd reads notifications again")
        self._dropping = False

    def _target(self) -> str | bytes:
        address = self._address or ""
        if address.startswith("@"):
            return b"\0" + address[1:].encode()  # abstract namespace
        return address

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def ready(self, status: str) -> None:
        self._status = status
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    async def keep_alive(self) -> None:
        """Send WATCHDOG=1 at half the configured interval, from the event loop itself: a
        loop that hangs stops the pings and systemd restarts the process."""
        if self.watchdog_interval_s is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval_s / 2)


class _PriorityPrefix(logging.Formatter):
    """`<N>message` for a stderr that journald reads (SyslogLevelPrefix=yes by default)."""

    _LEVELS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self._LEVELS if record.levelno >= level), 7)
        return f"<{priority}>{super().format(record)}"


def log_handler(environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Journal when our stderr is the journal (systemd sets $JOURNAL_STREAM), else stderr."""
    env = os.environ if environ is None else environ
    if not _stderr_is_journal(env):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return handler
    if _sd_journal is not None:
        # Fields such as ANNOUNCEMENT_ID and SOURCE come from `extra=` on the log call.
        handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER="edge-tts")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PriorityPrefix("%(name)s: %(message)s"))
    return handler


def _stderr_is_journal(env: Mapping[str, str]) -> bool:
    stream = env.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)
