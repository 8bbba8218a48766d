"""Whether this machine's clock is kept by NTP, as the kernel says (adjtimex): a group's
rooms start together only as well as their clocks agree."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized


class _Timex(ctypes.Structure):
    # The head of struct timex (adjtimex(2)); the rest is room for the kernel to write.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_char * 256),
    ]


@dataclass(frozen=True)
class ClockState:
    synchronized: bool | None  # None: the kernel could not be asked
    max_error_ms: float | None = None  # the kernel's bound on the clock's error


def clock_state() -> ClockState:
    """Ask the kernel, changing nothing (modes 0 needs no privilege)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return ClockState(None)
    return read_state(state, timex.maxerror)


def read_state(state: int, maxerror_us: int) -> ClockState:
    """What adjtimex's answer means: -1 failed, TIME_ERROR unsynchronized, else in step."""
    if state < 0:
        return ClockState(None)
    return ClockState(state != _TIME_ERROR, maxerror_us / 1000)


def describe(clock: ClockState) -> tuple[bool, str]:
    """(fine, a line for `edge-tts check`)."""
    if clock.synchronized is None:
        return False, "clock: cannot tell whether it is NTP-synchronized"
    if not clock.synchronized:
        return False, (
            "clock is not NTP-synchronized: the rooms of a group may start apart "
            "(enable it: `sudo timedatectl set-ntp true`, or install chrony)"
        )
    return True, f"clock NTP-synchronized (error at most {clock.max_error_ms:.0f} ms)"
