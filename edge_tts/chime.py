"""The chime before an announcement: the built-in one (two soft bell notes, made at the
output rate, so nothing to resample) or a WAV file of the user's."""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import wave
from array import array
from pathlib import Path

MAX_CHIME_BYTES = 4 * 2**20  # a few seconds of 48 kHz stereo; a chime is a second or two


class ChimeError(Exception):
    """The chime cannot be played; the announcement goes on without it."""


@functools.lru_cache(maxsize=8)
def load_chime(spec: str, rate: int) -> bytes:
    """16-bit mono PCM at `rate` for "builtin" or a WAV path."""
    if spec == "builtin":
        return builtin_chime(rate)
    return _read_wav(Path(spec), rate)


def builtin_chime(rate: int) -> bytes:
    """Two bell-like notes (E6 then C6), 0.2 s apart, decaying; 0.55 s in all."""
    samples = array("h", bytes(2 * int(rate * 0.55)))
    for start_s, freq in ((0.0, 1318.5), (0.2, 1046.5)):
        start = int(start_s * rate)
        for n in range(len(samples) - start):
            t = n / rate
            envelope = math.exp(-t * 9) * min(1.0, t / 0.004)  # soft attack, bell decay
            tone = math.sin(2 * math.pi * freq * t) + 0.3 * math.sin(2 * math.pi * 2 * freq * t)
            value = samples[start + n] + int(6000 * envelope * tone)
            samples[start + n] = max(-32768, min(32767, value))
    return samples.tobytes()


def read_chime_file(path: Path) -> bytes:
    """The bytes of a chime file: a regular file of at most MAX_CHIME_BYTES, opened without
    blocking, so a FIFO, a device or a huge file named as a chime cannot hang or swamp the
    speaker."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ChimeError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChimeError(f"{path} is not a regular file")
        if st.st_size > MAX_CHIME_BYTES:
            raise ChimeError(
                f"{path} is {st.st_size} bytes, over the {MAX_CHIME_BYTES} a chime may have"
            )
        data = f.read(MAX_CHIME_BYTES + 1)
    if len(data) > MAX_CHIME_BYTES:
        raise ChimeError(f"{path} grew past the {MAX_CHIME_BYTES} bytes a chime may have")
    return data


def _read_wav(path: Path, rate: int) -> bytes:
    data = read_chime_file(path)
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, wav_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames: bytes = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ChimeError(f"cannot read {path}: {exc}") from None
    if width != 2:
        raise ChimeError(f"{path}: 16-bit PCM WAV needed, not {8 * width}-bit")
    if channels > 1:  # mix down
        stereo = array("h", frames)
        frames = array(
            "h",
            (sum(stereo[i : i + channels]) // channels for i in range(0, len(stereo), channels)),
        ).tobytes()
    if wav_rate != rate:
        try:
            from .resample import resample

            frames = bytes(resample(frames, wav_rate, rate))
        except ImportError:
            raise ChimeError(
                f"{path} is at {wav_rate} Hz; audio.sample_rate is {rate} Hz "
                "(resampling needs the offline extra)"
            ) from None
    return frames
