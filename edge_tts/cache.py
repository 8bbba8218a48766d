"""The phrase cache: the PCM of every completed synthesis, on disk, so a phrase heard before
starts at once, costs nothing and plays with the cloud gone.

An entry is one file, `<dir>/<key[:2]>/<key>.pcm`: a header (magic, sample rate, length, the
entry's own key, SHA-256 of key and PCM) and the PCM. It is written under a temporary name,
flushed to disk and renamed into place only after the synthesis finished cleanly, so a crash
or power cut leaves either no entry or a whole one; the key, length and checksum are verified
before a byte is played (a file swapped for another valid entry is not this phrase), and a bad
entry is removed and synthesized afresh. Recency is the file's mtime (touched on every hit):
eviction removes the least recently used first and survives restarts. Several processes (the
daemon, `edge-tts say`, `edge-tts cache`) share a cache safely: renames are atomic, readers of
an evicted file keep their open copy, a writer holds a lock on its temporary file (so a
process that opens the cache sweeps exactly the ones whose writer died), and the hit/miss
counters are updated under a file lock (at most once a minute, and at exit: an SD card is not
rewritten on every announcement).

The cache never costs an announcement: a disk that is full, read-only or gone makes it stop
writing (the announcement plays all the same) and say why in `problem`, until the disk has
room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import CacheConfig, EngineName
from .engines import SynthesisRequest
from .paths import cache_dir
from .text import normalize_text

log = logging.getLogger(__name__)

_MAGIC = b"EDGETTS2"
# magic, sample rate, PCM length, the entry's key, SHA-256 of key and PCM
_HEADER = struct.Struct("<8sIQ32s32s")
_CHUNK_BYTES = 4800  # 100 ms at 24 kHz: what a hit hands the player at a time
_RETRY_S = 60.0  # a cache that could not write tries again after this, or once there is room
_ROOM_BYTES = 4 * 2**20  # free space that counts as room again
_COUNT_EVERY_S = 60.0  # hits and misses reach the SD card at most this often (and at exit)


def cache_key(request: SynthesisRequest) -> str:
    """Everything that changes the sound, and nothing that does not (the playback volume is
    a local gain, so one entry serves every volume)."""
    v = request.voice
    identity: dict[str, object] = {
        "engine": v.engine,
        "model": v.model,
        "voice": v.voice,
        "rate": v.rate,
        "pitch": v.pitch,
        "cloud_volume": v.volume,
        "instructions": request.instructions or v.instructions,
        "seed": v.seed,
        "language_hints": list(v.language_hints),
        "ssml": request.ssml,
        "sample_rate": request.sample_rate,
        "text": normalize_text(request.text),
    }
    if v.engine == EngineName.QWEN:  # (only here, so the other engines' keys stay as they were)
        identity["qwen"] = [v.language_type, v.mode, v.optimize_instructions]
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    oldest: float | None  # last use, seconds since the epoch
    newest: float | None

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


def open_cache(config: CacheConfig) -> PhraseCache | None:
    """The cache at `cache.dir`, or where it goes by default (the service's cache directory,
    else the user's: `paths.cache_dir`); if `cache.dir` cannot be written, the default, with a
    warning; None if the cache is off or no directory can be written."""
    if config.max_mb == 0:
        return None
    max_bytes = config.max_mb * 1024 * 1024
    default = cache_dir()
    wanted = Path(config.dir) if config.dir else default
    for root in dict.fromkeys(r for r in (wanted, default) if r is not None):
        try:
            cache = PhraseCache.open(root, max_bytes)
        except OSError as exc:
            log.warning("cache: cannot use %s (%s)", root, exc.strerror or exc)
            continue
        if root != wanted:
            log.warning("cache: using %s instead of %s (cache.dir)", root, wanted)
        return cache
    log.warning(
        "cache: off, no directory could be written (set cache.dir); every phrase goes to the cloud"
    )
    return None


class PhraseCache:
    """Entries on disk under `root`, at most `max_bytes` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._parts = root / "tmp"
        self._counters = root / "counters.json"
        # (entries, bytes) as of this process's last scan (stats or eviction): what the status
        # line shows without reading the directory again.
        self.footprint: tuple[int, int] | None = None
        self.problem: str | None = None  # why the cache is not writing now, if it is not
        self._retry_at = 0.0
        # Hits and misses not yet written: the counters file is rewritten at most once every
        # count_every_s (and by flush_counts at exit), not on every announcement.
        self.count_every_s = _COUNT_EVERY_S
        self._pending = {"hits": 0, "misses": 0}
        self._counted_at = time.monotonic()

    @classmethod
    def open(cls, root: Path, max_bytes: int) -> PhraseCache:
        """Create the directories (raises OSError if that is impossible) and sweep what a
        dead writer left behind."""
        cache = cls(root, max_bytes)
        cache._parts.mkdir(parents=True, exist_ok=True)
        probe = cache._parts / f"probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        cache.sweep()
        return cache

    def sweep(self) -> int:
        """Remove the temporary files of writers that died (no writer holds their lock)."""
        removed = 0
        for part in self._parts.glob("*.part"):
            try:
                fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            else:
                with contextlib.suppress(OSError):
                    part.unlink()
                    removed += 1
            finally:
                os.close(fd)
        if removed:
            log.info("cache: removed %d unfinished entries of a writer that died", removed)
        return removed

    # --- the disk's health -----------------------------------------------------------------

    def writable(self) -> bool:
        """Whether to try keeping a phrase now: always, unless a write failed lately and the
        disk does not show room again."""
        if self.problem is None or time.monotonic() >= self._retry_at:
            return True
        try:
            st = os.statvfs(self.root)
        except OSError:
            return False
        return not st.f_flag & os.ST_RDONLY and st.f_bavail * st.f_frsize >= _ROOM_BYTES

    def write_failed(self, exc: OSError) -> None:
        """A write failed: stop writing for a while and say why."""
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        problem = f"not writing: {reason} ({self.root})"
        if problem != self.problem:
            log.warning(
                "cache: %s; phrases are spoken without being kept until it can write", problem
            )
        self.problem = problem
        self._retry_at = time.monotonic() + _RETRY_S

    def write_worked(self) -> None:
        if self.problem is not None:
            log.info("cache: writing again")
        self.problem = None

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pcm"

    # --- reading -----------------------------------------------------------------------

    def load(self, key: str, sample_rate: int) -> bytes | None:
        """The entry's PCM, verified whole; None on a miss. A bad entry is removed."""
        path = self.path(key)
        try:
            with path.open("rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache: cannot read %s (%s); synthesizing instead", path, exc)
            return None
        problem = _verify(blob, key, sample_rate)
        if problem:
            log.warning(
                "cache entry %s is damaged (%s); removed, synthesizing afresh", key[:12], problem
            )
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):  # gone meanwhile, or a disk turned read-only
            os.utime(path)  # most recently used
        return blob[_HEADER.size :]

    # --- writing -----------------------------------------------------------------------

    async def record(
        self, audio: AsyncGenerator[bytes, None], key: str, sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        """`audio` passed on as it comes, and kept as an entry only once it has ended cleanly:
        a failed, cut or stopped synthesis leaves nothing behind. A cache that cannot be
        written (disk full, permissions) never costs the announcement."""
        entry: EntryWriter | None = None
        if self.writable():
            try:
                entry = EntryWriter(self, key, sample_rate)
            except OSError as exc:
                self.write_failed(exc)
        try:
            async with contextlib.aclosing(audio) as chunks:
                async for chunk in chunks:
                    if entry is not None:
                        try:
                            entry.append(chunk)
                        except OSError as exc:
                            self.write_failed(exc)
                            entry.discard()
                            entry = None
                    yield chunk
            if entry is not None:
                try:
                    await entry.commit()
                except OSError as exc:
                    self.write_failed(exc)
                else:
                    self.write_worked()
        finally:
            if entry is not None:
                entry.discard()

    def added(self, size: int) -> None:
        """An entry of `size` bytes was kept: the directory is listed (to evict) only when the
        cache may be over its size, not on every write."""
        if self.footprint is None:
            self.evict()
            return
        entries, total = self.footprint
        self.footprint = (entries + 1, total + size)
        if total + size > self.max_bytes:
            self.evict()

    def evict(self) -> int:
        """Remove least recently used entries until the cache fits; returns how many."""
        entries = list(self._entries())
        total = sum(size for _, size, _ in entries)
        removed = 0
        for path, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            total -= size
        self.footprint = (len(entries) - removed, total)
        if removed:
            log.info("cache: evicted %d least recently used entries", removed)
        return removed

    def _entries(self) -> Iterator[tuple[Path, int, float]]:
        for path in self.root.glob("??/*.pcm"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                yield path, st.st_size, st.st_mtime

    # --- counting ----------------------------------------------------------------------

    def count(self, *, hits: int = 0, misses: int = 0) -> None:
        """Add to the hit and miss counters; they reach the shared file (updated under a
        lock) once count_every_s has passed since they last did, or at flush_counts()."""
        self._pending["hits"] += hits
        self._pending["misses"] += misses
        if time.monotonic() - self._counted_at >= self.count_every_s:
            self.flush_counts()

    def flush_counts(self) -> None:
        """Write the counts not yet written (at exit, and from the daemon's minute timer)."""
        self._counted_at = time.monotonic()
        if not any(self._pending.values()):
            return
        try:
            with self._locked_counters() as counters:
                counters["hits"] += self._pending["hits"]
                counters["misses"] += self._pending["misses"]
        except OSError as exc:
            log.warning("cache: cannot update %s (%s)", self._counters, exc)
            return
        self._pending = {"hits": 0, "misses": 0}

    def _written_counts(self) -> dict[str, int]:
        """The counters file as it is (read without writing)."""
        try:
            counters = json.loads(self._counters.read_text() or "{}")
        except FileNotFoundError:
            return {"hits": 0, "misses": 0}
        except ValueError:
            counters = {}
        return {"hits": int(counters.get("hits", 0)), "misses": int(counters.get("misses", 0))}

    @contextlib.contextmanager
    def _locked_counters(self) -> Iterator[dict[str, int]]:
        fd = os.open(self._counters, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                counters = json.loads(f.read() or "{}")
            except ValueError:
                counters = {}
            counters = {
                "hits": int(counters.get("hits", 0)),
                "misses": int(counters.get("misses", 0)),
            }
            yield counters
            f.seek(0)
            f.truncate()
            f.write(json.dumps(counters))

    def stats(self) -> CacheStats:
        entries = list(self._entries())
        self.footprint = (len(entries), sum(size for _, size, _ in entries))
        times = [mtime for _, _, mtime in entries]
        hits = misses = 0
        try:
            counters = self._written_counts()
            hits, misses = counters["hits"], counters["misses"]
        except OSError as exc:
            log.warning("cache: cannot read %s (%s)", self._counters, exc.strerror or exc)
        return CacheStats(
            len(entries),
            sum(size for _, size, _ in entries),
            self.max_bytes,
            hits + self._pending["hits"],  # this process's counts not yet written, too
            misses + self._pending["misses"],
            min(times, default=None),
            max(times, default=None),
        )

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns how many entries went."""
        removed = 0
        for path, _, _ in list(self._entries()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        with self._locked_counters() as counters:
            counters["hits"] = counters["misses"] = 0
        self._pending = {"hits": 0, "misses": 0}
        return removed


class EntryWriter:
    """One entry being written: PCM appended as it arrives, published by `commit()`."""

    def __init__(self, cache: PhraseCache, key: str, sample_rate: int) -> None:
        self._cache = cache
        self._key = key
        self._sample_rate = sample_rate
        cache._parts.mkdir(parents=True, exist_ok=True)
        self._part = cache._parts / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        self._file = self._part.open("wb")
        fcntl.flock(self._file, fcntl.LOCK_EX)  # ours while we live: see PhraseCache.sweep
        self._file.write(b"\0" * _HEADER.size)  # filled in at commit
        self._hash = hashlib.sha256(bytes.fromhex(key))
        self._length = 0
        self._done = False

    def append(self, pcm: bytes) -> None:
        self._file.write(pcm)
        self._hash.update(pcm)
        self._length += len(pcm)

    async def commit(self) -> None:
        """Publish the entry, off the event loop; once begun, a cancellation of the caller
        does not interrupt it half way."""
        self._done = True
        try:
            await asyncio.shield(asyncio.to_thread(self._commit))
        except OSError:
            self._done = False  # what is left of it is discarded
            raise

    def _commit(self) -> None:
        """Header in, flushed to disk, renamed into place: from here on a whole entry."""
        f = self._file
        f.seek(0)
        f.write(
            _HEADER.pack(
                _MAGIC,
                self._sample_rate,
                self._length,
                bytes.fromhex(self._key),
                self._hash.digest(),
            )
        )
        f.flush()
        os.fsync(f.fileno())
        f.close()
        target = self._cache.path(self._key)
        target.parent.mkdir(exist_ok=True)
        os.replace(self._part, target)
        _fsync_dir(target.parent)
        self._cache.added(_HEADER.size + self._length)

    def discard(self) -> None:
        """Drop the unfinished entry; quietly, for it may be the disk that failed (a full
        disk raises again when the buffered rest is flushed on close)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._part.unlink()


def _verify(blob: bytes, key: str, sample_rate: int) -> str | None:
    if len(blob) < _HEADER.size:
        return f"{len(blob)} bytes, shorter than its header"
    magic, rate, length, own_key, digest = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        return "not an edge-tts cache entry (or one of an older version)"
    if own_key != bytes.fromhex(key):
        return "the entry of another phrase"
    if rate != sample_rate:
        return f"recorded at {rate} Hz, not {sample_rate} Hz"
    if len(blob) - _HEADER.size != length:
        return f"{len(blob) - _HEADER.size} bytes of PCM where the header says {length}"
    checksum = hashlib.sha256(own_key)
    checksum.update(memoryview(blob)[_HEADER.size :])
    if checksum.digest() != digest:
        return "checksum mismatch"
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def replay(pcm: bytes) -> AsyncGenerator[bytes, None]:
    """A cached entry as the player takes audio: chunk by chunk."""
    for offset in range(0, len(pcm), _CHUNK_BYTES):
        yield pcm[offset : offset + _CHUNK_BYTES]
        await asyncio.sleep(0)
