"""The official dashscope SDK's Qwen-TTS Realtime time to first audio against a URL; prints
one JSON object {"cold": [ms...], "ready": [ms...]}.

    python bench/sdk_qwen_first_audio.py REALTIME_URL API_KEY N TEXT

cold: from connect() to the first response.audio.delta, with session.update, append_text
and commit in between, as the documentation's commit-mode example does it.
ready: the session connected and configured beforehand; from append_text to the first delta.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import dashscope
from dashscope.audio.qwen_tts_realtime import QwenTtsRealtime, QwenTtsRealtimeCallback

MODEL, VOICE = "qwen3-tts-flash-realtime", "Cherry"


class FirstAudio(QwenTtsRealtimeCallback):
    def __init__(self) -> None:
        self.at: float | None = None
        self.updated = threading.Event()
        self.finished = threading.Event()

    def on_event(self, message: Any) -> None:
        kind = message["type"]
        if kind == "response.audio.delta" and self.at is None:
            self.at = time.perf_counter()
        elif kind == "session.updated":
            self.updated.set()
        elif kind == "session.finished":
            self.finished.set()


def run(url: str, text: str, ready: bool) -> float:
    cb = FirstAudio()
    client = QwenTtsRealtime(model=MODEL, callback=cb, url=url)
    start = time.perf_counter()
    client.connect()
    client.update_session(voice=VOICE, mode="commit")
    if ready:
        if not cb.updated.wait(30):
            raise SystemExit("no session.updated")
        start = time.perf_counter()
    client.append_text(text)
    client.commit()
    client.finish()
    if not cb.finished.wait(30) or cb.at is None:
        raise SystemExit("the SDK got no audio")
    client.close()
    return (cb.at - start) * 1000


def main() -> None:
    url, key, n, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dashscope.api_key = key
    cold = [run(url, text, ready=False) for _ in range(n)]
    ready = [run(url, text, ready=True) for _ in range(n)]
    print(json.dumps({"cold": cold, "ready": ready}))


if __name__ == "__main__":
    main()
