"""The durable queue: every accepted announcement is on disk until its final event.

One append-only file of JSON lines per device, `<state dir>/queue-<device>.jsonl`:

    {"add": 7, "mid": 12, "digest": "…", "received": 1764112000.1, "announcement": {…}}
    {"end": 7}

`add` is written and flushed to disk (fdatasync) before the broker's delivery is
acknowledged, so a message the broker handed over is either on disk or will be delivered
again; `end` (after finished, failed or dropped) is appended without a flush of its own: it
reaches the disk with the next `add`'s flush or the kernel's writeback a few seconds later. So
the SD card sees one small flushed write per announcement.

At start the file is read back: every `add` without its `end` is queued again, in the order
it arrived (the queue puts it in priority order), and the file is rewritten with only those.
A line torn by a power cut is skipped. A redelivery by the broker of a message journaled
but not yet acknowledged when the process died (the same packet id and payload) is
recognised and not queued twice.

What survives what: `kill -9`, a crash, SIGTERM, `systemctl restart`: every unfinished
announcement, each spoken once from its beginning (one cut mid-sentence is spoken again whole).
A power cut: the same, except that an announcement that ended in the last few seconds
before it (whose `end` the kernel had not yet written) is spoken again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .announcement import Announcement, Priority
from .paths import state_dir

log = logging.getLogger(__name__)

_COMPACT_BYTES = 64 * 1024  # rewritten (emptied) once this big with nothing pending
_FIELDS = (
    "text",
    "id",
    "voice",
    "volume",
    "priority",
    "chime",
    "instructions",
    "cache",
    "sent_at",
    "ssml",
    "play_at",
    "group",
)


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:32]


@dataclass(frozen=True)
class Restored:
    """An announcement found unfinished in the journal at start."""

    announcement: Announcement
    received: float  # wall-clock time it was first accepted


class Journal:
    """Appends and flushes; never raises for a disk problem (logs it and goes on in memory:
    the announcement is still spoken, only not durable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock: int | None = None  # held while this process keeps the queue
        self._next = 1
        self._pending: set[int] = set()
        self._redelivery: set[tuple[int, str]] = set()  # (mid, digest) restored at start
        self.problem: str | None = None

    @classmethod
    def for_device(cls, device: str, environ: dict[str, str] | None = None) -> Journal:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
        return cls(state_dir(environ) / f"queue-{safe}.jsonl")

    # --- start -----------------------------------------------------------------------------

    def open(self) -> list[Restored]:
        """Read what the last run left unfinished, rewrite the file with just that, and open
        it for appending. Returns the unfinished announcements in the order they arrived. A
        second process for the same device finds the queue taken and keeps its own in memory
        (it must not replay, or rewrite, another's)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(
                self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._failed(f"another edge-tts process keeps {self.path}")
            return []
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc.strerror or exc}")
            return []
        records = self._read()
        restored: list[Restored] = []
        keep: list[bytes] = []
        for seq, record in records.items():
            try:
                a = _announcement(record["announcement"], seq, record["received"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("queue journal: skipping an unreadable entry (%s)", exc)
                continue
            restored.append(Restored(a, float(record["received"])))
            self._pending.add(seq)
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self._redelivery.add((int(record["mid"]), str(record["digest"])))
            keep.append(_line(record))
            self._next = max(self._next, seq + 1)
        try:
            _replace(self.path, b"".join(keep))
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc.strerror or exc}")
        if restored:
            log.info(
                "queue journal: %d announcements left unfinished by the last run", len(restored)
            )
        return restored

    def _read(self) -> dict[int, dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("queue journal: cannot read %s (%s)", self.path, exc.strerror or exc)
            return {}
        added: dict[int, dict[str, Any]] = {}
        for raw in data.splitlines():
            try:
                record = json.loads(raw)
                if "add" in record:
                    seq = int(record["add"])
                    added[seq] = record
                    self._next = max(self._next, seq + 1)
                elif "end" in record:
                    added.pop(int(record["end"]), None)
            except (ValueError, TypeError, AttributeError):
                continue  # a line torn by a power cut
        return added

    def redelivered(self, mid: int, payload_digest: str) -> bool:
        """Whether a message is the broker's redelivery of one restored from the journal."""
        return (mid, payload_digest) in self._redelivery

    # --- running ---------------------------------------------------------------------------

    def add(self, a: Announcement, *, mid: int = 0, payload_digest: str = "") -> Announcement:
        """Append `a`; returns it with its journal sequence number. Call `flush()` before
        acknowledging the message."""
        seq, self._next = self._next, self._next + 1
        record = {
            "add": seq,
            "mid": mid,
            "digest": payload_digest,
            "received": time.time(),
            "announcement": {k: getattr(a, k) for k in _FIELDS},
        }
        self._pending.add(seq)
        self._append(_line(record))
        return dataclasses.replace(a, seq=seq)

    async def flush(self) -> None:
        """Everything appended so far is on the disk (off the event loop)."""
        fd = self._fd
        if fd is None:
            return
        try:
            await asyncio.to_thread(os.fdatasync, fd)
        except OSError as exc:
            self._failed(f"cannot flush {self.path}: {exc.strerror or exc}")

    def end(self, a: Announcement) -> None:
        """`a` had its final event: finished, failed or dropped."""
        if a.seq is None or a.seq not in self._pending:
            return
        self._pending.discard(a.seq)
        self._append(_line({"end": a.seq}))
        if not self._pending:
            self._compact()

    def close(self) -> None:
        for fd in (self._fd, self._lock):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock = None

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line)
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc.strerror or exc}")
        else:
            if self.problem:
                log.info("queue journal: writing again")
                self.problem = None

    def _compact(self) -> None:
        """With nothing pending the journal holds nothing worth keeping: empty it once it has
        grown (rarely, so this costs the SD card nothing per announcement)."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_size >= _COMPACT_BYTES:
                os.ftruncate(self._fd, 0)
        except OSError as exc:
            log.debug("queue journal: compaction failed: %s", exc)

    def _failed(self, problem: str) -> None:
        if problem != self.problem:
            log.warning(
                "queue journal: %s; announcements are kept in memory only until it can be written",
                problem,
            )
        self.problem = problem


def _line(record: dict[str, Any]) -> bytes:
    # The newline goes first: a line torn by a full disk never runs into the next record.
    return b"\n" + json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode()


def _announcement(fields: dict[str, Any], seq: int, received: float) -> Announcement:
    values = {k: fields[k] for k in _FIELDS if k in fields}
    if not isinstance(values.get("text"), str) or not isinstance(values.get("id"), str):
        raise ValueError("no text or id")
    values["priority"] = Priority(values.get("priority", Priority.NORMAL))
    age = max(0.0, time.time() - float(received))
    return Announcement(**values, seq=seq, received_at=time.monotonic() - age)


def _replace(path: Path, data: bytes) -> None:
    """Write `data` as `path`, whole or not at all."""
    part = path.with_suffix(".tmp")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
