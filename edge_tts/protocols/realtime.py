"""One Qwen-TTS Realtime session, as a state machine.

The reference's order: the service opens with `session.created`; the client sends
`session.update` (voice, format, rate, mode…) and the service confirms with
`session.updated`. Text is appended to the input buffer (`input_text_buffer.append`), and in
commit mode committed piece by piece (`input_text_buffer.commit`: one response per commit);
`session.finish` asks for the rest, and `session.finished` ends the session, after which the
service closes the connection. Audio comes base64 in `response.audio.delta`; each response
ends with `response.done`.

An `error` of type `invalid_request_error` means the service refused what we sent and keeps
the session; any other error ends the session on the service's side.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import uuid
from typing import Any

from ..errors import SynthesisError, TaskFailed
from . import Audio, Event, Finished, ProtocolMisuse, SentenceDone, Started


class SessionState(enum.Enum):
    OPENING = enum.auto()  # waiting for session.created
    CONFIGURING = enum.auto()  # session.update sent, waiting for session.updated
    READY = enum.auto()  # configured: text may be appended
    FINISHING = enum.auto()  # session.finish sent
    FINISHED = enum.auto()  # session.finished: the service closes the connection
    FAILED = enum.auto()


class SessionRefused(TaskFailed):
    """The service refused the session's configuration (during set-up)."""

    def __init__(self, reason: str, *, recoverable: bool) -> None:
        super().__init__(reason)
        self.recoverable = recoverable  # invalid_request_error: what we sent, not the service


def client_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": "event_" + uuid.uuid4().hex, "type": kind, **fields}


def parse_event(frame: str | bytes) -> dict[str, Any]:
    """A service event as a dict with a string `type`, or SynthesisError."""
    try:
        event = json.loads(frame)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ValueError
        return event
    except (ValueError, TypeError):
        raise SynthesisError("DashScope sent a message that is not a Qwen-TTS event") from None


def error_of(event: dict[str, Any]) -> tuple[bool, str]:
    """(recoverable, "code: message") of an error event."""
    error = event.get("error")
    error = error if isinstance(error, dict) else {}
    code = error.get("code") or "unknown"
    message = error.get("message") or "no message"
    return error.get("type") == "invalid_request_error", f"{code}: {message}"


class Session:
    """A session: feed every frame to `receive()`, send what `data_to_send()` returns after
    each call. Set-up runs by itself (session.update goes out when session.created comes);
    once `Started` came, `send_text()` pieces and `finish()`.

    `receive` raises SessionRefused when the set-up is refused, TaskFailed when the service
    fails a request, SynthesisError for what is not a Qwen-TTS event."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.commit = config.get("mode") == "commit"
        self.state = SessionState.OPENING
        self._outgoing: list[dict[str, Any]] = []

    # --- what the caller says ------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Append a piece of text; in commit mode commit it, so it is spoken as one response."""
        if self.state is not SessionState.READY:
            raise ProtocolMisuse(f"send_text() in state {self.state.name}")
        self._outgoing.append(client_event("input_text_buffer.append", text=text))
        if self.commit:
            self._outgoing.append(client_event("input_text_buffer.commit"))

    def finish(self) -> None:
        """No more text: session.finish (the service speaks what is left, then ends)."""
        if self.state is SessionState.FINISHING:
            return
        if self.state is not SessionState.READY:
            raise ProtocolMisuse(f"finish() in state {self.state.name}")
        self._outgoing.append(client_event("session.finish"))
        self.state = SessionState.FINISHING

    @property
    def ended(self) -> bool:
        """The service ended it as asked (task-finished, session.finished)."""
        return self.state is SessionState.FINISHED

    def data_to_send(self) -> list[str]:
        out, self._outgoing = self._outgoing, []
        return [json.dumps(m) for m in out]

    # --- what the service says -----------------------------------------------------------

    def receive(self, frame: str | bytes) -> Event | None:
        if self.state in (SessionState.FINISHED, SessionState.FAILED):
            raise ProtocolMisuse(f"receive() in state {self.state.name}")
        try:
            return self._receive(parse_event(frame))
        except SynthesisError:
            self.state = SessionState.FAILED
            raise

    def _receive(self, event: dict[str, Any]) -> Event | None:
        kind = event["type"]
        if self.state is SessionState.OPENING:
            if kind == "error":  # a key refused, a model unknown: before any session
                raise TaskFailed(f"DashScope refused the session: {error_of(event)[1]}")
            if kind != "session.created":
                raise SynthesisError(f"DashScope opened no Qwen session (got {kind})")
            self._outgoing.append(client_event("session.update", session=self.config))
            self.state = SessionState.CONFIGURING
            return None
        if kind == "error":
            recoverable, what = error_of(event)
            if self.state is SessionState.CONFIGURING:
                raise SessionRefused(what, recoverable=recoverable)
            verb = "refused the request" if recoverable else "failed"
            raise TaskFailed(f"DashScope {verb}: {what}")
        if self.state is SessionState.CONFIGURING:
            if kind == "session.updated":
                self.state = SessionState.READY
                return Started()
            return None
        if kind == "response.audio.delta":
            delta = event.get("delta") or ""
            try:
                return Audio(base64.b64decode(delta, validate=True))
            except (binascii.Error, TypeError, ValueError):
                raise SynthesisError("DashScope sent audio that is not base64") from None
        if kind == "response.done":
            response = event.get("response")
            status = response.get("status", "completed") if isinstance(response, dict) else None
            if status not in ("completed", None):
                raise TaskFailed(f"DashScope ended a response as {status}")
            return SentenceDone() if self.commit else None
        if kind == "session.finished":
            self.state = SessionState.FINISHED
            return Finished()
        return None
