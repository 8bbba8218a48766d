"""The Announcement value and the parsing of MQTT `say` payloads into it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import unicodedata
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .config import GROUP_NAME
from .errors import BadAnnouncement
from .ssml import check_ssml

log = logging.getLogger(__name__)


class Priority(StrEnum):
    """How urgent an announcement is, least first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


PRIORITIES = tuple(Priority)
_KNOWN_KEYS = {
    "text",
    "ssml",
    "title",
    "voice",
    "volume",
    "priority",
    "chime",
    "id",
    "instructions",
    "cache",
    "sent_at",
    "play_at",
}
_ALLOWED_CONTROLS = {"\n", "\t", "\r"}

# Bounds on what a payload may make the parser do, whatever it contains.
_MAX_DEPTH = 8  # nesting of JSON arrays and objects (an announcement needs 1)
_MAX_INT_DIGITS = 20
_MAX_INSTRUCTIONS = 2000  # characters; the services' own limits are lower
_MAX_TITLE = 200
_FUTURE_SLACK_S = 300.0  # a sent_at this far ahead of our clock is a clock out of step
MAX_PLAY_AHEAD_S = 3600.0  # a play_at further ahead is refused: a mistake, not a schedule
_EXCERPT = 40  # characters of the input quoted back in a reason


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Announcement:
    """One thing to say: text, which voice, how loud, how urgent, and its id for events."""

    text: str
    id: str = field(default_factory=new_id)
    voice: str | None = None
    volume: int | None = None
    priority: Priority = Priority.NORMAL
    chime: bool | str | None = None  # true, false, "builtin" or a name from audio.chimes
    instructions: str | None = None
    cache: bool = True  # false: neither read nor write the phrase cache
    sent_at: float | None = None  # when the sender published it (epoch seconds), if it said
    ssml: bool = False  # text is an SSML document (<speak>...</speak>)
    play_at: float | None = None  # when its first sample is to be heard (epoch seconds)
    group: str | None = None  # the group it was sent to (`<prefix>/group/<group>/say`)
    received_at: float = field(default_factory=time.monotonic, compare=False)
    seq: int | None = field(default=None, compare=False)  # its entry in the durable queue


def excerpt(value: object, limit: int = _EXCERPT) -> str:
    """`value` as a short, printable quote for a reason or a log line."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_text(text: str, max_chars: int, what: str = "text") -> str:
    text = text.strip()
    if not text:
        raise BadAnnouncement(f"{what} is empty")
    if len(text) > max_chars:
        raise BadAnnouncement(
            f"{what} is {len(text)} characters, over the limit of {max_chars} "
            "(announcements.max_chars)"
        )
    _check_characters(text, what)
    return text


def _check_characters(text: str, what: str) -> None:
    for c in text:
        category = unicodedata.category(c)
        if category == "Cs":
            raise BadAnnouncement(f"{what} contains an unpaired surrogate (U+{ord(c):04X})")
        if category == "Cc" and c not in _ALLOWED_CONTROLS:
            raise BadAnnouncement(f"{what} contains control characters (binary data?)")


def _field(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise BadAnnouncement(f"'{key}' must be {what}")
    if not isinstance(value, kinds):
        raise BadAnnouncement(f"'{key}' must be {what}")
    if isinstance(value, str):
        _check_characters(value, f"'{key}'")
    return value


def max_payload_bytes(max_chars: int) -> int:
    """The largest `say` payload read at all: the text at up to four UTF-8 bytes a character,
    SSML markup around it, and the other fields."""
    return 8 * max_chars + 4096


def parse_payload(
    payload: bytes,
    *,
    voices: Collection[str],
    max_chars: int,
    msg_id: str | None = None,
    chimes: Collection[str] = (),
    speak_title: bool = True,
) -> Announcement:
    """Turn a `say` payload (plain UTF-8 text, a JSON string, or a JSON object) into an
    Announcement. Total and bounded: any payload gives an Announcement or BadAnnouncement with
    a reason a user can read (quoting at most a short excerpt); `exc.id` is the id to report.
    """
    announcement_id = msg_id or new_id()
    rules = _Rules(frozenset(voices), max_chars, frozenset(chimes), speak_title)
    try:
        return _parse(payload, rules, announcement_id)
    except BadAnnouncement as exc:
        exc.id = exc.id or announcement_id
        raise


@dataclass(frozen=True)
class _Rules:
    """What the config allows an announcement: the voices and chimes it may name, its length,
    whether a title is said."""

    voices: frozenset[str]
    max_chars: int
    chimes: frozenset[str]
    speak_title: bool


def _parse(payload: bytes, rules: _Rules, announcement_id: str) -> Announcement:
    max_chars = rules.max_chars
    limit = max_payload_bytes(max_chars)
    if len(payload) > limit:
        raise BadAnnouncement(
            f"payload is {len(payload)} bytes, over the limit of {limit} "
            "(8 x announcements.max_chars + 4096)"
        )
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadAnnouncement(f"payload is not valid UTF-8 (byte {exc.start})") from None
    body = body.removeprefix("\ufeff")  # a byte-order mark some editors put first
    stripped = body.lstrip()
    if stripped.startswith('"'):
        # A JSON string is its value; text that merely opens with a quote is the text.
        try:
            value = _loads(body)
        except BadAnnouncement:
            value = None
        if isinstance(value, str):
            body = value
        return Announcement(text=check_text(body, max_chars), id=announcement_id)
    # A payload that opens like JSON is JSON; anything else is the text itself.
    if not stripped.startswith(("{", "[")):
        return Announcement(text=check_text(body, max_chars), id=announcement_id)
    obj = _loads(body)
    if not isinstance(obj, dict):
        raise BadAnnouncement("JSON payload must be an object")
    raw_id = _field(obj, "id", (str, int), "a string")
    if raw_id is not None:
        announcement_id = str(raw_id)[:64]
    try:
        return _from_json(obj, rules, announcement_id)
    except BadAnnouncement as exc:
        exc.id = exc.id or announcement_id
        raise


def restore(
    fields: object,
    *,
    voices: Collection[str] | None = None,
    max_chars: int = 2000,
    chimes: Collection[str] | None = None,
) -> Announcement:
    """An announcement read back from the durable queue (`Announcement` fields as the journal
    wrote them), held to the same rules as a `say` payload: a damaged or hand-edited file is
    input from outside too. voices/chimes None: any name (a journal read without a config).
    Raises BadAnnouncement with the reason, and the id when it has one."""
    if not isinstance(fields, dict):
        raise BadAnnouncement("not an announcement")
    announcement_id = fields.get("id")
    if not isinstance(announcement_id, str) or not 0 < len(announcement_id) <= 64:
        raise BadAnnouncement("no id")
    obj = {k: v for k, v in fields.items() if k in _RESTORED and v is not None}
    obj["ssml" if fields.get("ssml") is True else "text"] = fields.get("text")
    group = fields.get("group")
    if group is not None and (not isinstance(group, str) or not GROUP_NAME.fullmatch(group)):
        raise BadAnnouncement(f"'group' {excerpt(group)} is not a group name", announcement_id)
    voice, chime = fields.get("voice"), fields.get("chime")
    rules = _Rules(
        frozenset(voices if voices is not None else [voice] if isinstance(voice, str) else []),
        max_chars,
        frozenset(chimes if chimes is not None else [chime] if isinstance(chime, str) else []),
        speak_title=False,  # a title was made part of the text when it arrived
    )
    try:
        a = _from_json(obj, rules, announcement_id)
    except BadAnnouncement as exc:
        exc.id = announcement_id
        raise
    return dataclasses.replace(a, group=group)


_RESTORED = ("voice", "volume", "priority", "chime", "instructions", "cache", "sent_at", "play_at")


def _loads(body: str) -> Any:
    """json.loads, bounded: nesting, integer digits; NaN and Infinity refused."""
    if _nesting(body) > _MAX_DEPTH:
        raise BadAnnouncement(
            f"JSON nested more than {_MAX_DEPTH} deep; an announcement is one object"
        )
    try:
        return json.loads(body, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise BadAnnouncement(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # what json itself may raise past its limits
        raise BadAnnouncement(f"invalid JSON: {excerpt(str(exc))}") from None


def _nesting(body: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped), counted
    before the parser recurses into it."""
    depth = deepest = 0
    in_string = escaped = False
    for c in body:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > _MAX_DEPTH:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        raise BadAnnouncement(
            f"JSON has a number of {len(digits)} digits; at most {_MAX_INT_DIGITS} are read"
        )
    return int(digits)


def _float(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise BadAnnouncement(f"JSON has a number too large to use ({excerpt(digits, 20)})")
    return value


def _constant(name: str) -> float:
    raise BadAnnouncement(f"JSON has {name}, which is not a number an announcement can use")


def _from_json(obj: dict[str, Any], rules: _Rules, announcement_id: str) -> Announcement:
    voices, max_chars = rules.voices, rules.max_chars
    unknown = set(obj) - _KNOWN_KEYS
    if unknown:
        shown = ", ".join(excerpt(k, 20) for k in sorted(unknown)[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        log.warning("announcement %s: ignoring unknown keys %s%s", announcement_id, shown, more)
    if "text" not in obj and "ssml" not in obj:
        raise BadAnnouncement("JSON payload has no 'text' (or 'ssml')")
    if "text" in obj and "ssml" in obj:
        raise BadAnnouncement("JSON payload has both 'text' and 'ssml'; send one")
    ssml = "ssml" in obj
    key = "ssml" if ssml else "text"
    text = obj[key]
    if not isinstance(text, str):
        raise BadAnnouncement(f"'{key}' must be a string")
    title = _field(obj, "title", str, "a string")
    if title is not None and rules.speak_title and title.strip() and not ssml:
        # A notify title ("Washing machine") is said first, as a sentence of its own.
        title = check_text(title, _MAX_TITLE, "'title'")
        text = f"{title}{'' if title[-1] in '.!?:;。！？' else '.'} {text.strip()}"
    text = check_text(text, max_payload_bytes(max_chars) if ssml else max_chars, key)
    if ssml:
        # The limit applies to what would be spoken, not to the markup around it.
        check_text(check_ssml(text), max_chars, "the SSML's text")
    voice = _field(obj, "voice", str, "a voice name")
    if voice is not None and voice not in voices:
        raise BadAnnouncement(
            f"unknown voice {excerpt(voice)} (known: {', '.join(sorted(voices))})"
        )
    volume = _field(obj, "volume", (int, float), "a number 0-100")
    if volume is not None:
        if not 0 <= volume <= 100:
            raise BadAnnouncement("'volume' must be a number 0-100")
        volume = round(volume)
    priority = _field(obj, "priority", str, f"one of {', '.join(PRIORITIES)}") or Priority.NORMAL
    if priority not in PRIORITIES:
        raise BadAnnouncement(f"'priority' must be one of {', '.join(PRIORITIES)}")
    priority = Priority(priority)
    chime = _chime(obj, rules.chimes)
    instructions = _field(obj, "instructions", str, "a string")
    if instructions is not None and len(instructions) > _MAX_INSTRUCTIONS:
        raise BadAnnouncement(
            f"'instructions' is {len(instructions)} characters, over the "
            f"limit of {_MAX_INSTRUCTIONS}"
        )
    cache = _field(obj, "cache", bool, "true or false")
    sent_at = _sent_at(obj.get("sent_at"))
    play_at = _play_at(obj.get("play_at"))
    return Announcement(
        text=text,
        id=announcement_id,
        voice=voice,
        volume=volume,
        priority=priority,
        chime=chime,
        instructions=instructions,
        cache=cache is not False,
        sent_at=sent_at,
        ssml=ssml,
        play_at=play_at,
    )


def _chime(obj: dict[str, Any], chimes: Collection[str]) -> bool | str | None:
    """A message's chime: true, false, "builtin" or a name from audio.chimes, never a path."""
    names = ["builtin", *sorted(chimes)]
    what = f"true, false or a chime name ({', '.join(names)}; audio.chimes)"
    chime: bool | str | None = _field(obj, "chime", (bool, str), what)
    if isinstance(chime, str) and chime not in names:
        raise BadAnnouncement(f"'chime' {excerpt(chime)} is not a configured chime; must be {what}")
    return chime


def _moment(value: Any, *, local: bool) -> float | None:
    """Epoch seconds from an ISO 8601 time or a number of epoch seconds; None if it is
    neither. A time without its offset is local time if `local`, else not a moment."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            if not local:
                return None
            moment = moment.astimezone()
        when = moment.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return when if math.isfinite(when) else None


def _play_at(value: Any) -> float | None:
    """`play_at`: when the first sample is to be heard, an ISO 8601 time with its offset (the
    rooms of a group may not share a time zone) or epoch seconds; at most an hour ahead. One
    in the past is the daemon's to judge (late, or too old: announcements.max_age_s)."""
    if value is None:
        return None
    when = _moment(value, local=False)
    if when is None:
        raise BadAnnouncement(
            "'play_at' must be an ISO 8601 time with its offset (2026-11-26T08:00:00+01:00) "
            f"or epoch seconds (got {excerpt(value)})"
        )
    ahead = when - time.time()
    if ahead > MAX_PLAY_AHEAD_S:
        raise BadAnnouncement(
            f"'play_at' is {min(ahead, 1e12):.0f} s ahead, more than an hour: is the "
            "sender's clock or this one wrong?"
        )
    return when


def _sent_at(value: Any) -> float | None:
    """`sent_at`: an ISO 8601 time (with its offset, as Home Assistant's now() gives) or epoch
    seconds; a time that is not finite, cannot be represented, or lies ahead of our clock by
    more than a clock's usual error is refused."""
    if value is None:
        return None
    when = _moment(value, local=True)
    if when is None:
        raise BadAnnouncement(
            f"'sent_at' must be an ISO 8601 time or epoch seconds (got {excerpt(value)})"
        )
    ahead = when - time.time()
    if ahead > _FUTURE_SLACK_S:
        raise BadAnnouncement(
            f"'sent_at' is {min(ahead, 1e12):.0f} s in the future: is the "
            "sender's clock or this one wrong?"
        )
    return when
