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
    a = parse(
        json.dumps(
            {
                "text": "Hi",
                "voice": "butler",
                "volume": 40,
                "priority": "high",
                "chime": False,
                "id": "x1",
                "instructions": "Softly",
            }
        )
    )
    assert (a.text, a.voice, a.volume, a.priority, a.chime, a.id, a.instructions) == (
        "Hi",
        "butler",
        40,
        "high",
        False,
        "x1",
        "Softly",
    )


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
        ('{"text": "a", "chime": "/etc/shadow"}', "is not a configured chime"),
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


@given(
    st.dictionaries(
        st.sampled_from(
            ["text", "voice", "volume", "priority", "chime", "id", "instructions", "extra"]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-5, 200),
            st.text(max_size=20),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_any_json_object_gives_an_announcement_or_a_reason(obj: dict[str, object]) -> None:
    try:
        a = parse(json.dumps(obj))
    except BadAnnouncement as exc:
        assert exc.reason
    else:
        assert a.voice in (None, *VOICES)
        assert a.volume is None or 0 <= a.volume <= 100


# --- hostile payloads: each is refused with a short reason, none raises anything else ---

HOSTILE = [
    ("[" * 1000, "nested more than 8 deep"),
    ('{"text": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}", "over the limit"),
    ('{"text": "x", "id": ' + "9" * 5000 + "}", "number of 5000 digits"),
    ('{"text": "x", "volume": ' + "9" * 4301 + "}", "digits"),
    ('{"text": "x", "sent_at": ' + "9" * 400 + "}", "number of 400 digits"),
    ('{"text": "x", "sent_at": "0001-01-01T00:00:00"}', "'sent_at' must be an ISO 8601"),
    ('{"text": "x", "sent_at": "9999-12-31T23:59:59+14:00"}', "in the future"),
    ('{"text": "x", "sent_at": NaN}', "NaN"),
    ('{"text": "x", "sent_at": Infinity}', "Infinity"),
    ('{"text": "x", "sent_at": -Infinity}', "-Infinity"),
    ('{"text": "x", "sent_at": 1e999}', "too large"),
    ('{"text": "x", "sent_at": 1e300}', "in the future"),
    ('{"text": "caf\\ud800e"}', "unpaired surrogate"),
    ('{"text": "a", "instructions": "caf\\udfffe"}', "'instructions' contains an unpaired"),
    ('{"text": "a", "id": "x\\ud800"}', "'id' contains an unpaired"),
    ('{"text": "a", "instructions": "' + "i" * 2001 + '"}', "'instructions' is 2001"),
    ('{"ssml": "<!DOCTYPE speak [<!ENTITY a \\"aaaaaaaaaa\\">]><speak>&a;&a;</speak>"}', "DOCTYPE"),
    ('{"ssml": "<speak>&unknown;</speak>"}', "undefined entity"),
    ('{"ssml": "<?xml-stylesheet href=\\"x\\"?><speak>a</speak>"}', "processing instruction"),
    (
        '{"ssml": "<speak>' + "<s>word</s> " * 500 + '</speak>"}',
        "the SSML's text is 2499 characters, over the limit of 2000",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), HOSTILE, ids=[r for _, r in HOSTILE])
def test_hostile_payloads_are_refused_with_a_short_reason(payload: str, reason: str) -> None:
    with pytest.raises(BadAnnouncement) as refused:
        parse(payload, max_chars=2000)  # the default
    assert reason in refused.value.reason
    assert len(refused.value.reason) < 200


def test_a_huge_field_is_quoted_back_as_a_short_excerpt() -> None:
    with pytest.raises(BadAnnouncement) as refused:
        parse_payload(
            json.dumps({"text": "a", "voice": "v" * 50_000}).encode(),
            voices=VOICES,
            max_chars=10_000,
        )
    assert "unknown voice 'vvvv" in refused.value.reason
    assert len(refused.value.reason) < 200


def test_byte_order_mark_and_json_strings_are_not_spoken_as_markup() -> None:
    assert parse(b'\xef\xbb\xbf{"text": "BOM first"}').text == "BOM first"
    assert parse(b"\xef\xbb\xbfplain with BOM").text == "plain with BOM"
    assert parse('"A JSON string."').text == "A JSON string."
    assert parse('"Quoted" opens this sentence.').text == '"Quoted" opens this sentence.'


def test_entities_of_xml_itself_are_fine_in_ssml() -> None:
    a = parse('{"ssml": "<speak>Salt &amp; pepper &#233;</speak>"}')
    assert a.ssml and "&amp;" in a.text


def test_sent_at_within_a_clock_error_of_now_is_accepted() -> None:
    import time

    assert parse(json.dumps({"text": "a", "sent_at": time.time() + 60})).sent_at


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=30,
    )
)
def test_any_json_value_in_any_field_gives_an_announcement_or_a_reason(value: object) -> None:
    for key in (
        "text",
        "ssml",
        "voice",
        "volume",
        "priority",
        "chime",
        "id",
        "instructions",
        "cache",
        "sent_at",
    ):
        body = {"text": "a", key: value} if key != "ssml" else {key: value}
        try:
            parse(json.dumps(body))
        except BadAnnouncement as exc:
            assert exc.reason and len(exc.reason) < 300


@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
    | st.text(alphabet='[]{}"\\:,0123456789eE.-+ NaInfityrulsf', max_size=300)
)
def test_any_text_as_a_payload_gives_an_announcement_or_a_reason(body: str) -> None:
    for payload in (body, "{" + body, '{"ssml": "<speak>' + body + '</speak>"}'):
        try:
            parse(payload.encode("utf-8", "surrogatepass"))
        except BadAnnouncement as exc:
            assert exc.reason


def test_a_title_comes_first_unless_turned_off() -> None:
    payload = json.dumps({"text": "The washer is done.", "title": "Laundry"}).encode()
    assert (
        parse_payload(payload, voices=VOICES, max_chars=100).text == "Laundry. The washer is done."
    )
    assert (
        parse_payload(payload, voices=VOICES, max_chars=100, speak_title=False).text
        == "The washer is done."
    )
    ask = json.dumps({"text": "Coming?", "title": "Dinner!"}).encode()
    assert parse_payload(ask, voices=VOICES, max_chars=100).text == "Dinner! Coming?"
    with pytest.raises(BadAnnouncement, match="'title' must be a string"):
        parse('{"text": "a", "title": 5}')
    with pytest.raises(BadAnnouncement, match="over the limit of 20"):
        parse_payload(payload, voices=VOICES, max_chars=20)  # the limit counts the title too


def test_text_of_exactly_max_chars_is_spoken_one_more_is_not() -> None:
    assert parse("x" * 100).text == "x" * 100
    assert parse(json.dumps({"text": "y" * 100})).text == "y" * 100
    with pytest.raises(BadAnnouncement, match="101 characters, over the limit of 100"):
        parse(json.dumps({"text": "y" * 101}))


@pytest.mark.parametrize(
    "document",
    ["<p>Hello</p>", "<speak:x xmlns:speak='u'>a</speak:x>", "<voice><speak>a</speak></voice>"],
)
def test_ssml_must_be_one_speak_element(document: str) -> None:
    with pytest.raises(BadAnnouncement, match="must be one <speak> element"):
        parse(json.dumps({"ssml": document}))


def test_json_after_leading_blank_lines_is_still_json() -> None:
    a = parse('\n  \t{"text": "Hi there", "id": "ws1", "priority": "high"}\n')
    assert (a.text, a.id, a.priority) == ("Hi there", "ws1", "high")
