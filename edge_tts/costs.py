"""What the cloud costs: characters sent to DashScope, counted per model the way the service
bills them (a CJK ideograph counts two, SSML tags count nothing), for today and this month,
kept across restarts, with an estimate from the documented prices; and the monthly cap
(`dashscope.monthly_characters`) past which the cloud voices give way to the fallback voice
until the month turns. Beside them, the announcements spoken today (the status line's).

The counts live in `<state dir>/usage-<device>.json`, written at most once a minute and at a
clean stop (an SD card is not rewritten per announcement; a power cut loses at most a minute
of counts), atomically (a new file renamed over the old).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from .models import PRICES_PER_10K
from .paths import state_dir

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Counts = tuple[dict[str, int], dict[str, int], dict[str, int]]
_SPOKEN = "announcements"


class Usage:
    """Characters per model, today and this month; the month's estimate and cap. Several
    processes (the daemon, `edge-tts say`) count into one file: each adds what it counted
    since its last write, under a lock."""

    def __init__(self, path: Path | None, cap: int | None = None, clock: Clock = datetime.now):
        self.path = path
        self.cap = cap or None  # 0: no cap
        self._clock = clock
        self._month, self._day = self._now()
        self.set_aside: Path | None = None  # a damaged file, kept for a person
        # Characters by model this month and today, and {"announcements": n} today: as the file
        # has them, and what this process counted since it last wrote.
        self._saved: Counts = ({}, {}, {})
        self._pending: Counts = ({}, {}, {})

    @classmethod
    def for_device(cls, device: str, cap: int | None, clock: Clock = datetime.now) -> Usage:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
        usage = cls(state_dir() / f"usage-{safe}.json", cap, clock)
        usage.flush()  # reads what the last run left
        return usage

    def _now(self) -> tuple[str, str]:
        now = self._clock()
        return now.strftime("%Y-%m"), now.strftime("%Y-%m-%d")

    def _roll(self) -> None:
        """A new day (or month) starts its counts at nothing; what was counted before it is
        written first, to the period it belongs to."""
        month, day = self._now()
        if (month, day) == (self._month, self._day):
            return
        self.flush()
        new_month = month != self._month
        self._month, self._day = month, day
        self._saved = ({} if new_month else self._saved[0], {}, {})

    @property
    def month(self) -> dict[str, int]:
        self._roll()
        return _sum(self._saved[0], self._pending[0])

    @property
    def today(self) -> dict[str, int]:
        self._roll()
        return _sum(self._saved[1], self._pending[1])

    @property
    def spoken_today(self) -> int:
        """Announcements spoken today, by every process that counts into the file."""
        self._roll()
        return _sum(self._saved[2], self._pending[2]).get(_SPOKEN, 0)

    # --- counting --------------------------------------------------------------------------

    def add(self, model: str, characters: int) -> None:
        if characters <= 0:
            return
        self._roll()
        for counts in self._pending[:2]:
            counts[model] = counts.get(model, 0) + characters

    def spoke(self) -> None:
        """One more announcement spoken today."""
        self._roll()
        spoken = self._pending[2]
        spoken[_SPOKEN] = spoken.get(_SPOKEN, 0) + 1

    def exhausted(self) -> str | None:
        """Why the cloud may not be asked now (the month's cap reached), or None."""
        used = sum(self.month.values())
        if self.cap is None or used < self.cap:
            return None
        return (
            f"this month's cloud characters are used up ({used:,} of "
            f"dashscope.monthly_characters: {self.cap:,})"
        )

    @staticmethod
    def estimate(counts: dict[str, int]) -> float | None:
        """US dollars at the documented prices; None when a model's price is not known."""
        total = 0.0
        for model, characters in counts.items():
            price = PRICES_PER_10K.get(model)
            if price is None:
                return None
            total += characters / 10_000 * price
        return round(total, 4)

    def as_dict(self) -> dict[str, object]:
        """The stats' `usage` part."""
        month, today = self.month, self.today
        return {
            "month": self._month,
            "characters_month": sum(month.values()),
            "characters_today": sum(today.values()),
            "by_model_month": month,
            "estimated_cost_month_usd": self.estimate(month),
            "monthly_cap": self.cap,
            "capped": self.exhausted() is not None,
            **({"damaged_file": str(self.set_aside)} if self.set_aside else {}),
        }

    # --- the file --------------------------------------------------------------------------

    def flush(self) -> None:
        """Add what this process counted to the file, and read what the others did (the
        minute timer, and at a clean stop)."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                saved = self._read()
                if not any(self._pending):
                    self._saved = saved
                    return
                month, today, spoken = (
                    _sum(a, b) for a, b in zip(saved, self._pending, strict=True)
                )
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "month": self._month,
                            "day": self._day,
                            "by_model_month": month,
                            "by_model_today": today,
                            "announcements_today": spoken.get(_SPOKEN, 0),
                        }
                    )
                )
                os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("usage: cannot write %s (%s)", self.path, exc.strerror or exc)
            return
        self._saved, self._pending = (month, today, spoken), ({}, {}, {})

    def _read(self) -> Counts:
        """The file's counts for this month and day (nothing for another period)."""
        assert self.path is not None
        try:
            saved = json.loads(self.path.read_text())
            month, day = str(saved["month"]), str(saved["day"])
            by_month = {str(k): _count(v) for k, v in dict(saved["by_model_month"]).items()}
            by_day = {str(k): _count(v) for k, v in dict(saved["by_model_today"]).items()}
            spoken = {_SPOKEN: _count(saved.get("announcements_today", 0))}  # (since 0.1.0)
        except FileNotFoundError:
            return {}, {}, {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Kept for a person (the month's count, which the cap is judged by, may be in it).
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            try:
                os.replace(self.path, aside)
                self.set_aside = aside
            except OSError:
                pass
            log.warning(
                "usage: %s unreadable (%s); counting from nothing (the file is kept as %s)",
                self.path,
                exc,
                self.set_aside or "nothing: it could not be moved",
            )
            return {}, {}, {}
        if month != self._month:
            return {}, {}, {}
        return (by_month, *((by_day, spoken) if day == self._day else ({}, {})))


def _count(value: object) -> int:
    """A count as the file may hold it: a whole number, not negative, of a size a count can
    reach (a damaged file's `Infinity`, -5 or 10**400 is refused, not believed)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ValueError(f"not a count: {str(value)[:20]}")
    return value


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys([*a, *b])}
