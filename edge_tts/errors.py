"""The few exception types edge-tts raises; each carries a reason a user can read."""

from __future__ import annotations


class EdgeTTSError(Exception):
    """Base of every error edge-tts raises on purpose."""


class ConfigError(EdgeTTSError):
    """The configuration is invalid; the message names the key path and the reason."""


class BadAnnouncement(EdgeTTSError):
    """An MQTT payload that cannot be spoken; `reason` goes into the `failed` event."""

    def __init__(self, reason: str, id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.id = id


class SynthesisError(EdgeTTSError):
    """A synthesis that did not complete; `reason` is what the user reads in the event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TaskFailed(SynthesisError):
    """The service failed or refused a task or a request in a session (its error event)."""


class CloudUnavailable(SynthesisError):
    """The cloud could not be reached or refused us (network, key, handshake)."""

    def __init__(self, reason: str, *, refused: bool = False, hint: str | None = None) -> None:
        super().__init__(reason)
        self.refused = refused  # retrying soon will not help: the user must change something
        self.hint = hint or "check dashscope.api_key_file or $DASHSCOPE_API_KEY"


class ConnectionLost(CloudUnavailable):
    """An open connection died during a task; the task may be retried on a fresh one."""


class AudioDeviceError(EdgeTTSError):
    """The audio output device cannot be opened or written."""
