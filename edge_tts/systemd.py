"""Living under systemd: readiness, status and watchdog notifications, and logging to the
journal with priorities and fields. Every part is a no-op off systemd.

Both speak systemd's documented datagram protocols directly, each from a non-blocking
socket: a supervisor or a journald that does not read (its queue full) costs dropped
datagrams and one line saying so, never a blocked event loop. Notifications go to
$NOTIFY_SOCKET (sd_notify's protocol: one datagram). Log lines go to the journal's native
socket (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) with their priority and fields such as
ANNOUNCEMENT_ID (`journalctl ANNOUNCEMENT_ID=...`). libsystemd, through systemd-python, does
both on blocking sockets and cost the daemon 1.1 MiB (1.7 on import: libsystemd and the
compression and crypto libraries it loads), so neither is used. Where the journal's socket
is not there, log lines to a journal stream carry their priority as a `<N>` prefix, which
journald reads.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


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


def _priority(record: logging.LogRecord) -> int:
    """syslog's priority for a record's level: crit 2, err 3, warning 4, info 6, debug 7."""
    levels = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
    return next((p for level, p in levels if record.levelno >= level), 7)


class _PriorityPrefix(logging.Formatter):
    """`<N>message` for a stderr that journald reads (SyslogLevelPrefix=yes by default)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_priority(record)}>{super().format(record)}"


# A journal field's name: capitals, digits and underscores, not first (those are journald's).
_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")


class JournalHandler(logging.Handler):
    """Log records as journal entries, over the native protocol: MESSAGE, PRIORITY,
    SYSLOG_IDENTIFIER, LOGGER and CODE_* fields, and every `extra=` field of the log call
    whose name is a journal field's (ANNOUNCEMENT_ID, SOURCE)."""

    def __init__(self, identifier: str = "edge-tts", path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self._identifier = identifier
        if not stat.S_ISSOCK(os.stat(path).st_mode):  # OSError when there is no journal here
            raise FileNotFoundError(f"{path} is not a socket")
        # Addressed on every send, not connected: a restarted journald is a new socket.
        self._path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)
        self._dropped = 0  # entries lost while journald was not reading (or not there)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._dropped:  # said first, once the journal reads again
                self._send(self._entry(self._dropped_record()))
                self._dropped = 0
            self._send(self._entry(record))
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            self._dropped += 1  # full, or restarting: said once it reads again
        except Exception:  # logging's own rule: a handler never raises
            self.handleError(record)

    def _entry(self, record: logging.LogRecord) -> list[bytes]:
        fields: dict[str, object] = {
            "MESSAGE": self.format(record),
            "PRIORITY": _priority(record),
            "SYSLOG_IDENTIFIER": self._identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
        }
        for name, value in vars(record).items():
            if _FIELD.fullmatch(name) and name not in fields:
                fields[name] = value
        return [_field(name, str(value)) for name, value in fields.items()]

    def _dropped_record(self) -> logging.LogRecord:
        return logging.LogRecord(
            __name__, logging.WARNING, __file__, 0,
            "%d earlier log line(s) dropped: the journal was not reading",
            (self._dropped,), None,
        )  # fmt: skip

    def _send(self, entry: list[bytes]) -> None:
        payload = b"".join(entry)
        try:
            self._socket.sendto(payload, self._path)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            self._send_large(payload)

    def _send_large(self, payload: bytes) -> None:
        """An entry over the socket's datagram size, as the protocol says: in a sealed
        memory file whose descriptor is the datagram."""
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            fds = array.array("i", [fd])
            self._socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, self._path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._socket.close()
        super().close()


def _field(name: str, value: str) -> bytes:
    """One field: NAME=value, or, for a value with a newline, NAME, its length and itself."""
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def log_handler(environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Journal when our stderr is the journal (systemd sets $JOURNAL_STREAM), else stderr."""
    env = os.environ if environ is None else environ
    if not _stderr_is_journal(env):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return handler
    try:
        handler = JournalHandler()
    except OSError:  # no journal socket (a container's journal stream, say)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PriorityPrefix("%(name)s: %(message)s"))
        return handler
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
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
