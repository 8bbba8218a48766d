"""The DashScope protocols as state machines: no socket, no clock, no asyncio.

Each object takes what the service sent (`receive`) and what the caller wants said
(`send_text`, `finish`), returns what happened (events), and holds the messages to send
(`data_to_send`). The engines and `edge-tts check` drive them over a WebSocket; unit tests
drive them with frames. The model is websockets' own `protocol.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Audio:
    """PCM the service sent: 16-bit mono little-endian at the rate the request asked for."""

    pcm: bytes


@dataclass(frozen=True)
class Started:
    """The service took the task (inference) or set the session up (Qwen): text may follow."""


@dataclass(frozen=True)
class SentenceDone:
    """The service finished the audio of one committed piece of text (Qwen, commit mode)."""


@dataclass(frozen=True)
class Finished:
    """The service ended the task or session as asked; no audio follows."""


Event = Audio | Started | SentenceDone | Finished


class ProtocolMisuse(RuntimeError):
    """The caller used a protocol object out of order (a bug in edge-tts, not the service)."""
