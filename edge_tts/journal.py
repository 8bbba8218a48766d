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
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .announcement import Announcement, restore
from .errors import BadAnnouncement
from .paths import state_dir

log = logging.getLogger(__name__)

_COMPACT_BYTES = 64 * 1024  # rewritten (emptied) once this big with nothing pending
MOST_RESTORED = 1000  # unfinished entries taken from a file, unless told (Journal.open)
# A record's longest line: the longest SSML a config allows (8 x 100,000 + 4096 characters),
# at 12 bytes a character as JSON escapes the worst of them, and the rest.
_MAX_LINE = 16 << 20
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


@dataclass(frozen=True)
class Refused:
    """An entry found unfinished in the journal that is not queued again: what it was (its id,
    if it had one) and why."""

    id: str
    reason: str


Restore = Callable[[object], Announcement]  # fields as written → Announcement, or BadAnnouncement


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
        self.set_aside: Path | None = None  # a damaged file kept at start, for a person

    @classmethod
    def for_device(cls, device: str, environ: dict[str, str] | None = None) -> Journal:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
        return cls(state_dir(environ) / f"queue-{safe}.jsonl")

    # --- start -----------------------------------------------------------------------------

    def open(
        self, restore: Restore = restore, most: int = MOST_RESTORED
    ) -> tuple[list[Restored], list[Refused]]:
        """Read what the last run left unfinished, rewrite the file with just that, and open
        it for appending. Returns the unfinished announcements in the order they arrived, and
        the entries refused (`restore` holds each to the rules of a `say` payload). More than
        `most` unfinished (more than the queue could leave: a damaged or hand-made file): the
        newest `most`, and the file kept beside. A second process for the same device finds
        the queue taken and keeps its own in memory (it must not replay, or rewrite,
        another's)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(
                self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._failed(f"another edge-tts process keeps {self.path}")
            return [], []
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc.strerror or exc}")
            return [], []
        records, overflowed = self._read(most)
        if overflowed:
            # More than a queue can leave unfinished (its size, as many held, one playing):
            # a damaged or hand-made file. The newest are queued; the whole file is kept for
            # a person to read, and restoring stays bounded in time and memory.
            aside = self._set_aside()
            log.warning(
                "queue journal: more unfinished entries than can be pending: the newest %d "
                "are queued again, and the file is kept as %s",
                most,
                aside or "nothing (it could not be copied)",
            )
        restored: list[Restored] = []
        refused: list[Refused] = []
        keep: list[bytes] = []
        now = time.time()
        for seq, record in records.items():
            fields, received = record.get("announcement"), _moment(record.get("received"))
            try:
                if received is None:
                    raise BadAnnouncement("no time it was received")
                a = restore(fields)
            except BadAnnouncement as exc:
                named = exc.id or (fields.get("id") if isinstance(fields, dict) else None) or ""
                log.warning("queue journal: entry %s not queued again: %s", named, exc.reason)
                refused.append(Refused(str(named)[:64], exc.reason))
                continue
            age = max(0.0, now - received)
            a = dataclasses.replace(a, seq=seq, received_at=time.monotonic() - age)
            restored.append(Restored(a, received))
            self._pending.add(seq)
            mid, payload_digest = _number(record.get("mid")), record.get("digest")
            if mid is not None and isinstance(payload_digest, str):
                self._redelivery.add((mid, payload_digest))
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
        return restored, refused

    def _read(self, most: int) -> tuple[dict[int, dict[str, Any]], bool]:
        """The entries added and not ended, by sequence number, in the order they arrived (at
        most the newest `most`: whether more were let go). Read a line at a time, each of a
        bounded length: a line torn by a power cut, too long, or not a record is skipped (and
        counted in one line of the log)."""
        added: OrderedDict[int, dict[str, Any]] = OrderedDict()  # (the oldest let go in O(1))
        skipped = 0
        overflowed = False
        try:
            with open(self.path, "rb") as f:
                for raw in _lines(f, _MAX_LINE):
                    record = _record(raw)
                    if record is None:
                        skipped += raw.strip() != b""
                    elif "add" in record:
                        added[record["add"]] = record
                        self._next = max(self._next, record["add"] + 1)
                        if len(added) > most:  # held to a bound as it is read
                            added.popitem(last=False)
                            overflowed = True
                    else:
                        added.pop(record["end"], None)
        except FileNotFoundError:
            return {}, False
        except OSError as exc:
            aside = self._set_aside()
            log.warning(
                "queue journal: cannot read %s (%s); what was read is queued again, and the "
                "file is kept as %s",
                self.path,
                exc.strerror or exc,
                aside or "nothing (it could not be copied)",
            )
            return added, overflowed
        if skipped:
            log.warning("queue journal: %d unreadable lines skipped (a power cut?)", skipped)
        return added, overflowed

    def _set_aside(self) -> Path | None:
        """Keep the file as it is (a link: the rewrite replaces the queue's name, not these
        bytes), beside the queue, for a person to read; its path, or None."""
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        try:
            os.link(self.path, aside)
        except OSError:
            return None
        self.set_aside = aside
        return aside

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


def _lines(f: BinaryIO, limit: int) -> Iterator[bytes]:
    """The file's lines, each read whole only if it is at most `limit` bytes; a longer one is
    read past in pieces and given as b"!" (not a record), never held."""
    while line := f.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield b"!"
            continue
        yield line


def _record(raw: bytes) -> dict[str, Any] | None:
    """A journal line as a record whose `add` or `end` is a sequence number, or None."""
    try:
        record = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    key = "add" if "add" in record else "end"
    return record if _number(record.get(key)) is not None else None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def _number(value: object) -> int | None:
    """A whole number a sequence number or a packet id can be (1 to 2**53), or None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**53
    return value if ok else None  # type: ignore[return-value]


def _moment(value: object) -> float | None:
    """Seconds since the epoch a record can have been received at, or None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e11:
        return float(value)
    return None


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
