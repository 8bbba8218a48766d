"""Secrets (the API key, the MQTT password): a value that never shows itself, and the log
filter that is the last line of defence should one be formatted into a message anyway."""

from __future__ import annotations

import logging


class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class RedactSecrets(logging.Filter):
    """Last line of defence: no secret value leaves through a log record."""

    def __init__(self, secrets: list[Secret]) -> None:
        super().__init__()
        self.update(secrets)

    def update(self, secrets: list[Secret]) -> None:
        self._values = [s.reveal() for s in secrets if s.reveal()]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(v in message for v in self._values):
            for value in self._values:
                message = message.replace(value, "********")
            record.msg, record.args = message, None
        return True
