"""16-bit mono PCM from one sample rate to another, whole or as a stream of chunks.

Linear interpolation: plenty for speech. Output sample k sits at input position
k * from_rate / to_rate, computed in integers, so a stream cut into any chunks gives
exactly the bytes the whole would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

# numpy is imported when a resampler is first made, not at start: most set-ups never resample
# (the cloud speaks at the output rate), and it is the largest part of an idle daemon's memory.


class Resampler:
    """Feed chunks as they arrive; each call returns the output they complete."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        import numpy as np

        self.from_rate, self.to_rate = from_rate, to_rate
        self._held = np.zeros(0, dtype=np.float64)  # input not yet fully used
        self._held_start = 0  # input index of _held[0]
        self._next = 0  # index of the next output sample
        self._odd = b""  # half a sample, completed by the next chunk

    def feed(self, pcm: bytes) -> bytes:
        return self._run(pcm, final=False)

    def flush(self) -> bytes:
        """The output the end of the input completes (its last sample held): call once, at
        the end of the stream."""
        return self._run(b"", final=True)

    def _run(self, pcm: bytes, *, final: bool) -> bytes:
        import numpy as np

        if self.from_rate == self.to_rate:
            return pcm
        pcm, self._odd = self._odd + pcm, b""
        if len(pcm) % 2:
            pcm, self._odd = pcm[:-1], pcm[-1:]
        new = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        held = np.concatenate((self._held, new))
        received = self._held_start + len(held)  # input samples seen so far
        # Output k needs input floor(k*f/t) and, unless it falls on a sample, the next one.
        f, t = self.from_rate, self.to_rate
        if final:  # every output before the end of the input
            last = -(-received * t // f) - 1
        else:  # outputs up to here have both their samples
            last = ((received - 1) * t) // f
        if last < self._next or not len(held):
            self._held = held
            return b""
        k = np.arange(self._next, last + 1, dtype=np.int64)
        index = (k * f) // t - self._held_start
        frac = ((k * f) % t) / t
        upper = np.minimum(index + 1, len(held) - 1)
        out = held[index] * (1 - frac) + held[upper] * frac
        self._next = last + 1
        keep_from = min((self._next * f) // t - self._held_start, len(held))
        self._held = held[keep_from:]
        self._held_start += keep_from
        return np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes()


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """The whole of `pcm` at another rate."""
    if from_rate == to_rate or not pcm:
        return pcm
    resampler = Resampler(from_rate, to_rate)
    return resampler.feed(pcm) + resampler.flush()
