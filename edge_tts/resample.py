"""16-bit mono PCM from one sample rate to another, whole or as a stream of chunks.

libsoxr (python-soxr) at its high quality: a proper band-limited resampler, where linear
interpolation would alias a little. It works in float, and the rounding to 16 bits is ours:
so a stream cut into any chunks gives exactly the bytes the whole would (soxr's own 16-bit
output is dithered, and differs by a bit or two with the cuts).

numpy and soxr are imported when a resampler is first made, not at start: most set-ups never
resample (the cloud speaks at the output rate), and numpy is the largest part of an idle
daemon's memory.
"""

from __future__ import annotations

from typing import Any

_QUALITY = "HQ"  # libsoxr's default: 20-bit precision, flat to 95 % of the band


class Resampler:
    """Feed chunks as they arrive; each call returns the output they complete."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate, self.to_rate = from_rate, to_rate
        self._stream: Any = None  # at the same rate the bytes pass as they are
        if from_rate != to_rate:
            import soxr

            self._stream = soxr.ResampleStream(
                from_rate, to_rate, 1, dtype="float32", quality=_QUALITY
            )
        self._odd = b""  # half a sample, completed by the next chunk

    def feed(self, pcm: bytes) -> bytes:
        return self._run(pcm, last=False)

    def flush(self) -> bytes:
        """What the end of the input completes (soxr's filter holds a few ms back): call
        once, at the end of the stream."""
        return self._run(b"", last=True)

    def _run(self, pcm: bytes, *, last: bool) -> bytes:
        if self._stream is None:
            return pcm
        import numpy as np

        pcm, self._odd = self._odd + pcm, b""
        if len(pcm) % 2:
            pcm, self._odd = pcm[:-1], pcm[-1:]
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        out = self._stream.resample_chunk(samples, last=last)
        return bytes(np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes())


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """The whole of `pcm` at another rate."""
    if from_rate == to_rate or not pcm:
        return pcm
    resampler = Resampler(from_rate, to_rate)
    return resampler.feed(pcm) + resampler.flush()
