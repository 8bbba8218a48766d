"""The cyclic garbage collector, set for a daemon that runs for months (issue 17).

CPython collects its oldest generation only once what survived into it has grown by a
quarter. With start-up's objects there (modules, the config, the daemon's parts: most of what
the process ever holds), the reference cycles announcements leave behind piled up by more
than a MiB before a collection, and the heap kept that size for good (`bench/soak.py`). So
the service's process freezes what start-up made (`keep_for_good`: out of the collector's
sight; refcounting still frees a frozen object no longer used), and collects once an
announcement or a Home Assistant request is over and nothing waits (`collected`): what it
looks at then is only what came after start-up (0.2 ms here, against 2.5 ms for everything;
a Pi is about ten times slower).

Two things the libraries hold that the service does not need are given back too:
`smaller_tls_reads` (asyncio's read buffer per TLS connection) and `page_out` (the pages of a
library run once at start-up; see `player.load_portaudio`).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable

# madvise(2) advice, Linux 5.4 and later: reclaim these pages now. A file's page that is used
# again is read back from the file; nothing is lost. (Older kernels refuse it: nothing done.)
MADV_PAGEOUT = 21
# What asyncio reads a TLS connection through: its default is 256 KiB per connection.
TLS_READ_BUFFER_BYTES = 64 * 1024
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
PROC_SELF = "/proc/self"  # where Linux says what this process maps


def keep_for_good() -> None:
    """Freeze what exists now: the service's process calls it once start-up is done."""
    gc.collect()  # start-up's own garbage is not kept for good
    gc.freeze()
    gc.collect()  # the oldest generation, now empty, is the next collection's measure


def collected() -> int:
    """Collect the garbage of what is over, in a process whose start-up is frozen (elsewhere,
    e.g. a test's process, a collection would look at everything, and is left to CPython);
    how many objects were unreachable."""
    return gc.collect() if gc.get_freeze_count() else 0


def smaller_tls_reads(size: int = TLS_READ_BUFFER_BYTES) -> None:
    """asyncio reads each TLS connection through a buffer of its own, zero-filled, so all of
    it resident: 256 KiB (`asyncio.sslproto.SSLProtocol.max_size`), half a MiB at idle for the
    two warm connections to the cloud. 64 KiB holds four whole TLS records, and the cloud
    sends audio at about 48 KB a second. The service's process calls it before it connects;
    a Python without that attribute is left alone."""
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", 0) > size:
        sslproto.SSLProtocol.max_size = size


def mapped_files() -> set[str]:
    """The files mapped into this process now (its libraries, among others); none known
    where there is no /proc."""
    try:
        with open(f"{PROC_SELF}/maps") as maps:
            return {m.path for m in map(_Mapping, maps) if m.path.startswith("/")}
    except OSError:
        return set()


def page_out(chosen: Callable[[str], bool]) -> int:
    """Have the kernel reclaim now the pages of the mapped files `chosen` picks (by path):
    memory the process made resident once and will not use again. Only a mapping none of
    whose pages was copied on write (relocations, data) is advised, so nothing goes to swap
    (on an SD card); a page of a file that is used again is read back from it. Pages another
    process maps too are left where they are. The KiB this process alone held in them before
    (its private clean pages; 0 where the kernel cannot, e.g. no /proc or Linux before 5.4)."""
    import ctypes

    try:
        advised = [m for m in _mappings() if chosen(m.path) and m.anonymous_kib == 0]
    except OSError:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    given = 0
    for m in advised:
        if libc.madvise(m.start, m.end - m.start, MADV_PAGEOUT) == 0:
            given += m.private_clean_kib
    return given


class _Mapping:
    def __init__(self, header: str) -> None:
        fields = header.split(maxsplit=5)
        start, end = fields[0].split("-")
        self.start, self.end = int(start, 16), int(end, 16)
        self.path = fields[5].rstrip("\n") if len(fields) == 6 else ""
        self.anonymous_kib = 0
        self.private_clean_kib = 0


def _mappings() -> list[_Mapping]:
    """This process's mappings, from /proc/self/smaps (a path of "" for memory of its own)."""
    found: list[_Mapping] = []
    with open(f"{PROC_SELF}/smaps") as smaps:
        for line in smaps:
            if _MAPPING.match(line):
                found.append(_Mapping(line))
            elif found and line.startswith("Anonymous:"):
                found[-1].anonymous_kib = int(line.split()[1])
            elif found and line.startswith("Private_Clean:"):
                found[-1].private_clean_kib = int(line.split()[1])
    return found
