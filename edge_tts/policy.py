"""The household rules an announcement meets on its way in and out, as pure functions (no
clock of their own, no I/O): too old to speak, quiet hours, the volume it plays at, and
whether it cuts in."""

from __future__ import annotations

from datetime import datetime

from .announcement import Announcement, Priority
from .config import Config, QuietHours


def too_old(since: float | None, now: float, max_age_s: float) -> str | None:
    """Why an announcement sent (or first accepted) at `since` is not to be spoken at `now`
    (both epoch seconds), or None if it is fresh enough."""
    if since is None:
        return None
    age = now - since
    if age <= max_age_s:
        return None
    return f"too old: sent {age:.0f} s ago (announcements.max_age_s)"


def too_late(play_at: float | None, now: float, max_age_s: float) -> str | None:
    """Why an announcement to be heard at `play_at` is not to be spoken at `now` (epoch
    seconds): that moment passed longer than max_age_s ago."""
    if play_at is None or now - play_at <= max_age_s:
        return None
    return f"too late: play_at was {now - play_at:.0f} s ago (announcements.max_age_s)"


CLOCKS_APART_S = 2.0  # a message "sent" further ahead of our clock than this: clocks disagree


def play_moment(
    play_at: float | None, sent_at: float | None, now: float
) -> tuple[float | None, str | None]:
    """When to play (epoch seconds, our clock), and a warning if the sender's clock is ahead
    of ours. A message stamped by its sender with both `sent_at` and `play_at` (Home
    Assistant's group entity) says how long after sending to play. Sent "in the future" by
    more than CLOCKS_APART_S, it shows our clock behind the sender's: its play_at would be
    waited for too long, so that delay is kept from now instead, and the rooms still start
    together (each receives it within milliseconds). A message sent long ago is not touched:
    it may have waited in the broker (late, or too old)."""
    if play_at is None or sent_at is None or sent_at - now <= CLOCKS_APART_S:
        return play_at, None
    return now + (play_at - sent_at), (
        f"the sender's clock is {sent_at - now:.0f} s ahead of this one: play_at taken as "
        "a delay from now (is this clock NTP-synchronized? edge-tts check)"
    )


def interrupts(new: Announcement, playing: Announcement | None) -> bool:
    """A critical announcement cuts off whatever less urgent one is playing."""
    return (
        new.priority == Priority.CRITICAL
        and playing is not None
        and playing.priority != Priority.CRITICAL
    )


def in_quiet_hours(quiet: QuietHours, now: datetime) -> bool:
    minute = now.hour * 60 + now.minute
    for start, end in quiet.windows:
        if start <= end:
            if start <= minute < end:
                return True
        elif minute >= start or minute < end:  # wraps past midnight
            return True
    return False


def playback_volume(config: Config, a: Announcement, now: datetime) -> int | None:
    """The volume to play `a` at now, or None if quiet hours drop it. High and critical always
    play; critical never below audio.critical_min_volume."""
    volume = a.volume if a.volume is not None else config.audio.volume
    if a.priority == Priority.CRITICAL:
        return max(volume, config.audio.critical_min_volume)
    if a.priority in (Priority.LOW, Priority.NORMAL) and in_quiet_hours(config.quiet_hours, now):
        if config.quiet_hours.action == "drop":
            return None
        return min(volume, config.quiet_hours.volume)
    return volume
