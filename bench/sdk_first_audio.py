"""The official dashscope SDK's time to first audio against a URL, cold and from its object
pool; prints one JSON object {"cold": [ms...], "pool": [ms...]}.

    python bench/sdk_first_audio.py URL API_KEY N TEXT
"""

from __future__ import annotations

import json
import sys
import threading
import time

import dashscope
from dashscope.audio.tts_v2 import (
    AudioFormat,
    ResultCallback,
    SpeechSynthesizer,
    SpeechSynthesizerObjectPool,
)

MODEL, VOICE = "cosyvoice-v3-flash", "longanyang"


class FirstAudio(ResultCallback):
    def __init__(self) -> None:
        self.at: float | None = None
        self.done = threading.Event()

    def on_data(self, data: bytes) -> None:
        if self.at is None:
            self.at = time.perf_counter()

    def on_complete(self) -> None:
        self.done.set()


def timed(synthesizer: SpeechSynthesizer, callback: FirstAudio, text: str) -> float:
    start = time.perf_counter()
    synthesizer.call(text, 30_000)  # with a callback it may return before the audio ends
    if not callback.done.wait(30) or callback.at is None:
        raise SystemExit("the SDK got no audio")
    return (callback.at - start) * 1000


def main() -> None:
    url, key, n, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dashscope.api_key = key
    cold = []
    for _ in range(n):
        cb = FirstAudio()
        synth = SpeechSynthesizer(
            model=MODEL,
            voice=VOICE,
            format=AudioFormat.PCM_24000HZ_MONO_16BIT,
            callback=cb,
            url=url,
        )
        cold.append(timed(synth, cb, text))
        synth.close()
    pool = SpeechSynthesizerObjectPool(max_size=1, url=url)
    warm = []
    for _ in range(n):
        cb = FirstAudio()
        synth = pool.borrow_synthesizer(
            model=MODEL, voice=VOICE, format=AudioFormat.PCM_24000HZ_MONO_16BIT, callback=cb
        )
        warm.append(timed(synth, cb, text))
        pool.return_synthesizer(synth)
        time.sleep(0.3)  # announcements are spaced; let the pool settle as it would in use
    pool.shutdown()
    print(json.dumps({"cold": cold, "pool": warm}))


if __name__ == "__main__":
    main()
