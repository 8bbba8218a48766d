"""The steps of an announcement's life as published on `<prefix>/<device>/event`: closed
vocabularies as StrEnums (the JSON stays the plain strings of the contract)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class EventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    DROPPED = "dropped"


FINAL = frozenset({EventKind.FINISHED, EventKind.FAILED, EventKind.DROPPED})  # the last one


class Source(StrEnum):
    """Where the speech came from."""

    CACHE = "cache"
    CLOUD = "cloud"
    FALLBACK = "fallback"  # the fallback voice, because the cloud could not
    OFFLINE = "offline"  # a piper voice, chosen
    SHARED = "shared"  # a group announcement another member synthesized and shared


@dataclass(frozen=True)
class Event:
    """One step of an announcement's life, as published on `<prefix>/<device>/event`."""

    id: str
    event: EventKind
    source: Source | None = None
    first_audio_ms: int | None = None  # started: from speaking to the speech's first audio
    error: str | None = None
    connection: str | None = None  # started, from the cloud: warm | new | replaced
    reason: str | None = None  # started/finished by the fallback voice: why the cloud did not
    queued_ms: int | None = None  # started: how long it waited before speaking began
    late_ms: int | None = None  # started, with a play_at: how late its first sample was heard

    def as_dict(self) -> dict[str, object]:
        fields = asdict(self)
        for optional in ("connection", "reason", "queued_ms", "late_ms"):
            if fields[optional] is None:
                del fields[optional]
        return fields
