"""The Announcement value and the parsing of MQTT `say` payloads into it."""

from __future__ import annotations

import json
import logging
import time
import unicodedata
import uuid
from datetime import datetime
from xml.etree import ElementTree
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .errors import BadAnnouncement

log = logging.getLogger(__name__)

PRIORITIES = ("low", "normal", "high", "critical")
_KNOWN_KEYS = {"text", "ssml", "voice", "volume", "priority", "chime", "id", "instructions",
               "cache", "sent_at"}
_ALLOWED_CONTROLS = {"\n", "\t", "\r"}


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Announcement:
    """One thing to say: text, which voice, how loud, how urgent, and its id for events."""

    text: str
    id: str = field(default_factory=new_id)
    voice: str | None = None
    volume: int | None = None
    priority: str = "normal"
    chime: bool | str | None = None
    instructions: str | None = None
    cache: bool = True  # false: neither read nor write the phrase cache
    sent_at: float | None = None  # when the sender published it (epoch seconds), if it said
    ssml: bool = False  # text is an SSML document (<speak>...</speak>)
    received_at: float = field(default_factory=time.monotonic, compare=False)


def check_text(text: str, max_chars: int) -> str:
    text = text.strip()
    if not text:
        raise BadAnnouncement("text is empty")
    if any(unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS for c in text):
        raise BadAnnouncement("text contains control characters (binary data?)")
    if len(text) > max_chars:
        raise BadAnnouncement(
            f"text is {len(text)} characters, over the limit of {max_chars} "
            "(announcements.max_chars)"
        )
    return text


def _field(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise BadAnnouncement(f"'{key}' must be {what}")
    if not isinstance(value, kinds):
        raise BadAnnouncement(f"'{key}' must be {what}")
    return value


def parse_payload(
    payload: bytes, *, voices: Collection[str], max_chars: int, msg_id: str | None = None
) -> Announcement:
    """Turn a `say` payload (plain UTF-8 text or a JSON object) into an Announcement.

    Raises BadAnnouncement with a reason a user can read; `exc.id` is the id to report.
    """
    announcement_id = msg_id or new_id()
    try:
        return _parse(payload, voices, max_chars, announcement_id)
    except BadAnnouncement as exc:
        exc.id = exc.id or announcement_id
        raise


def _parse(payload: bytes, voices: Collection[str], max_chars: int, announcement_id: str) -> Announcement:
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadAnnouncement(f"payload is not valid UTF-8 (byte {exc.start})") from None
    # A payload that opens like JSON is JSON; anything else is the text itself.
    if not body.lstrip().startswith(("{", "[")):
        return Announcement(text=check_text(body, max_chars), id=announcement_id)
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadAnnouncement(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise BadAnnouncement("JSON payload must be an object")
    raw_id = _field(obj, "id", (str, int), "a string")
    if raw_id is not None:
        announcement_id = str(raw_id)[:64]
    try:
        return _from_json(obj, voices, max_chars, announcement_id)
    except BadAnnouncement as exc:
        exc.id = exc.id or announcement_id
        raise


def _from_json(obj: dict[str, Any], voices: Collection[str], max_chars: int, announcement_id: str) -> Announcement:
    unknown = set(obj) - _KNOWN_KEYS
    if unknown:
        log.warning("announcement %s: ignoring unknown keys %s", announcement_id, sorted(unknown))
    if "text" not in obj and "ssml" not in obj:
        raise BadAnnouncement("JSON payload has no 'text' (or 'ssml')")
    if "text" in obj and "ssml" in obj:
        raise BadAnnouncement("JSON payload has both 'text' and 'ssml'; send one")
    ssml = "ssml" in obj
    text = obj["ssml" if ssml else "text"]
    if not isinstance(text, str):
        raise BadAnnouncement(f"'{'ssml' if ssml else 'text'}' must be a string")
    if ssml:
        check_ssml(text)
    voice = _field(obj, "voice", str, "a voice name")
    if voice is not None and voice not in voices:
        raise BadAnnouncement(f"unknown voice {voice!r} (known: {', '.join(sorted(voices))})")
    volume = _field(obj, "volume", (int, float), "a number 0-100")
    if volume is not None:
        if not 0 <= volume <= 100:
            raise BadAnnouncement("'volume' must be a number 0-100")
        volume = round(volume)
    priority = _field(obj, "priority", str, f"one of {', '.join(PRIORITIES)}") or "normal"
    if priority not in PRIORITIES:
        raise BadAnnouncement(f"'priority' must be one of {', '.join(PRIORITIES)}")
    chime = _field(obj, "chime", (bool, str), "true, false or a WAV path")
    instructions = _field(obj, "instructions", str, "a string")
    cache = _field(obj, "cache", bool, "true or false")
    sent_at = _sent_at(obj.get("sent_at"))
    return Announcement(
        text=check_text(text, max_chars),
        id=announcement_id,
        voice=voice,
        volume=volume,
        priority=priority,
        chime=chime,
        instructions=instructions,
        cache=cache is not False,
        sent_at=sent_at,
        ssml=ssml,
    )


def check_ssml(document: str) -> None:
    """An SSML announcement must be well-formed XML whose root is <speak>."""
    try:
        root = ElementTree.fromstring(document.strip())
    except ElementTree.ParseError as exc:
        raise BadAnnouncement(f"'ssml' is not well-formed XML: {exc}") from None
    if root.tag != "speak":
        raise BadAnnouncement(f"'ssml' must be one <speak> element (got <{root.tag}>)")


def ssml_text(document: str) -> str:
    """What an SSML document says, without its markup: for voices that take plain text."""
    words = " ".join("".join(ElementTree.fromstring(document.strip()).itertext()).split())
    return words or document


def _sent_at(value: Any) -> float | None:
    """`sent_at`: an ISO 8601 time (with its offset, as Home Assistant's now() gives) or epoch
    seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.astimezone()  # local time
            return when.timestamp()
    raise BadAnnouncement("'sent_at' must be an ISO 8601 time or epoch seconds")
