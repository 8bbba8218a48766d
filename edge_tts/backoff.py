"""Exponential backoff with jitter, shared by everything that reconnects."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `start` up to `cap`, each jittered by ±20% so that many
    clients (or a daemon and its own keeper) never retry in lockstep."""

    def __init__(self, start: float = 0.5, cap: float = 30.0) -> None:
        self.start = start
        self.cap = cap
        self._next = start

    def next(self) -> float:
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.start
