"""Parsing `say` payloads: every kind of bad input is refused with a reason; good input kept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_tts.announcement import parse_payload
from edge_tts.errors import BadAnnouncement

VOICES = ("default", "butler")


def parse(payload: bytes | str, max_chars: int = 100):  # type: ignore[no-untyped-def]
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse_payload(raw, voices=VOICES, max_chars=max_chars)


def test_plain_text_is_the_text() -> None:
    a = parse("  The washing machine is done.\n")
    assert a.text == "The washing machine is done."
    assert a.voice is None and a.priority == "normal" and len(a.id) == 12


def test_json_fields_are_kept() -> None:
    a = parse(json.dumps({"text": "Hi", "voice": "butler", "volume": 40, "priority": "high",
                          "chime": False, "id": "x1", "instructions": "Softly"}))
    assert (a.text, a.voice, a.volume, a.priority, a.chime, a.id, a.instructions) == (
        "Hi", "butler", 40, "high", False, "x1", "Softly")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc3\x28", "not valid UTF-8"),
        ("{not json", "invalid JSON"),
        ('{"id": "k"}', "no 'text'"),
        ('{"text": 5}', "'text' must be a string"),
        ("", "text is empty"),
        ('{"text": " \\n "}', "text is empty"),
        ("x" * 101, "over the limit of 100"),
        ('{"text": "a", "voice": "pirate"}', "unknown voice 'pirate'"),
        ('{"text": "a", "volume": -1}', "'volume' must be a number 0-100"),
        ('{"text": "a", "volume": true}', "'volume' must be a number 0-100"),
        ('{"text": "a", "priority": "urgent"}', "'priority' must be one of"),
        ('{"text": "a", "chime": 3}', "'chime' must be"),
        ("bell\x07", "control characters"),
        ("[1]", "must be an object"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload: bytes | str, reason: str) -> None:
    with pytest.raises(BadAnnouncement) as refused:
        parse(payload)
    assert reason in refused.value.reason
    assert refused.value.id


def test_a_refused_json_announcement_keeps_its_id() -> None:
    with pytest.raises(BadAnnouncement) as refused:
        parse('{"id": "door-7", "text": ""}')
    assert refused.value.id == "door-7"


@given(st.binary(max_size=300))
def test_any_bytes_give_an_announcement_or_a_reason(payload: bytes) -> None:
    try:
        a = parse(payload, max_chars=200)
    except BadAnnouncement as exc:
        assert exc.reason and exc.id
    else:
        assert a.text and a.text == a.text.strip() and len(a.text) <= 200


@given(st.dictionaries(st.sampled_from(["text", "voice", "volume", "priority", "chime", "id",
                                         "instructions", "extra"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.text(max_size=20),
                                 st.lists(st.integers(), max_size=2))))
def test_any_json_object_gives_an_announcement_or_a_reason(obj: dict[str, object]) -> None:
    try:
        a = parse(json.dumps(obj))
    except BadAnnouncement as exc:
        assert exc.reason
    else:
        assert a.voice in (None, *VOICES)
        assert a.volume is None or 0 <= a.volume <= 100
