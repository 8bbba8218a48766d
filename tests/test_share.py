"""The group-sharing protocol without a broker: messages in, audio or a reason out; and what
a hostile publisher on a speech topic can do (nothing but make a member speak for itself)."""

from __future__ import annotations

import functools
import json
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_tts.announcement import MAX_PLAY_AHEAD_S, parse_payload
from edge_tts.errors import BadAnnouncement
from edge_tts.mqtt import Kind, Route, Topics
from edge_tts.policy import CLOCKS_APART_S, play_moment, too_late
from edge_tts.protocols.share import (
    MAX_PIECE,
    MESSAGE_COST,
    Channel,
    Claim,
    End,
    Failed,
    Follower,
    Leader,
    Piece,
    ShareError,
    decode,
    encode,
    sign,
    verified,
)


def channel_of(*payloads: bytes, limit: int = 1 << 20) -> Channel:
    channel = Channel(limit)
    for payload in payloads:
        channel.receive(payload)
    return channel


def test_every_message_survives_its_encoding() -> None:
    for message in (
        Claim("kitchen", "ab" * 32),
        Piece("kitchen", 7, b"\x01\x02" * 100),
        End("kitchen", 8, 1600),
        Failed("kitchen", "the cloud broke off"),
    ):
        assert decode(encode(message)) == message


def test_the_first_claim_with_my_key_names_the_leader() -> None:
    channel = channel_of(
        encode(Claim("hall", "other-voice")),  # a member whose config asks for other audio
        encode(Claim("den", "k")),
        encode(Claim("attic", "k")),
    )
    assert channel.leader("k") == "den"
    assert channel.leader("other-voice") == "hall"
    assert channel.leader("nobody") is None
    # Only members known to be online are followed: not a stranger who claims first.
    assert channel.leader("k", {"attic", "hall"}) == "attic"
    assert channel.leader("k", set()) is None


def test_a_follower_gets_every_piece_in_order_then_the_end() -> None:
    leader = Leader("den")
    audio = bytes(range(256)) * 600  # more than one piece's worth
    claim = encode(Claim("den", "k"))
    payloads = [claim, *leader.audio(b"\x05\x06"), *leader.audio(audio), leader.end()]
    assert len(payloads) == 6 and leader.pieces == 4
    channel = Channel(1 << 20)
    follower = Follower(channel, "den", "k")
    got = []
    for payload in payloads:
        channel.receive(payload)
        got += follower.take()
    assert b"".join(got) == b"\x05\x06" + audio and follower.done
    assert all(len(p) <= MAX_PIECE for p in got)


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (lambda ps: ps[:1] + ps[2:], "piece 1 from den never came (got 2)"),
        (lambda ps: ps[:-2] + ps[-1:], "den sent 3 pieces (6 bytes), 2 (4 bytes) came"),
        (lambda ps: [*ps[:1], encode(Failed("den", "stopped playing it"))], "den stopped sharing"),
    ],
)
def test_a_broken_stream_breaks_with_the_reason(tamper: object, says: str) -> None:
    leader = Leader("den")
    payloads = [*leader.audio(b"ab"), *leader.audio(b"cd"), *leader.audio(b"ef"), leader.end()]
    channel = channel_of(encode(Claim("den", "k")), *tamper(payloads))  # type: ignore[operator]
    with pytest.raises(ShareError, match=re.escape(says)) as broken:
        Follower(channel, "den", "k").take()
    assert broken.value.reason == str(broken.value)  # what the member's event will say


def test_a_leader_that_cannot_go_on_says_why() -> None:
    leader = Leader("den")
    channel = channel_of(encode(Claim("den", "k")), *leader.audio(b"ab"), leader.failed("gone"))
    follower = Follower(channel, "den", "k")
    with pytest.raises(ShareError, match=r"^den stopped sharing: gone$"):
        follower.take()
    assert decode(leader.failed("gone")) == Failed("den", "gone")


def test_what_others_send_on_the_topic_is_not_played() -> None:
    leader = Leader("den")
    impostor = Leader("mallory")
    early = Leader("den")
    channel = channel_of(
        *early.audio(b"before its claim"),  # under its name, but not its
        encode(Claim("den", "other key")),
        *impostor.audio(b"evil"),
        encode(Claim("den", "k")),
        *leader.audio(b"good"),
        impostor.end(),
        leader.end(),
    )
    follower = Follower(channel, "den", "k")
    assert follower.take() == [b"good"] and follower.done


@given(st.binary(max_size=2000))
def test_any_payload_is_a_message_or_ignored(payload: bytes) -> None:
    channel = Channel(1 << 20)
    message = channel.receive(payload)
    assert (message is None) == (channel.ignored == 1)
    Follower(channel, "den", "k").take()  # no exception but ShareError could come from a stream


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"", "no header line"),
        (b"no newline", "no header line"),
        (b'{"from": "x", "k": "claim", "key": "k"}', "no header line"),  # a header, no newline
        (b"[1]\n", "the header is not a JSON object"),
        (b"{nope\n", "the header is not JSON"),
        (b'{"k": "audio", "seq": 0}\n', "no sender"),
        (b'{"from": "", "k": "claim", "key": "k"}\n', "no sender"),
        (b'{"from": "x", "k": "audio", "seq": -1}\n', "known kind ('audio')"),
        (b'{"from": "x", "k": "audio", "seq": true}\n', "known kind"),
        (b'{"from": "x", "k": "audio", "seq": 2147483648}\n', "known kind"),  # 2**31
        (b'{"from": "x", "k": "audio", "seq": 0}\n' + b"\0" * (MAX_PIECE + 1), "known kind"),
        (b'{"from": "x", "k": "claim", "key": 5}\n', "known kind ('claim')"),
        (b'{"from": "x", "k": "claim", "key": "k"}\nbody', "known kind"),
        (b'{"from": "x", "k": "end", "pieces": 1}\n', "known kind ('end')"),
        (b'{"from": "x", "k": "shout", "reason": "r"}\n', "known kind ('shout')"),
        (b'{"from": "x", "k": "' + b"s" * 30 + b'"}\n', "known kind ('" + "s" * 20 + "')"),
        (b'{"from": "x", "pad": "' + b"a" * 600 + b'"}\n', "no header line"),  # too long
    ],
)
def test_malformed_messages_are_refused_with_the_reason(payload: bytes, says: str) -> None:
    with pytest.raises(ShareError) as refused:
        decode(payload)
    assert says in refused.value.reason


def test_the_limits_hold_at_their_edges() -> None:
    header = b'{"from": "x", "k": "audio", "seq": 2147483647, "pad": "'
    line = header + b"a" * (512 - len(header) - 2) + b'"}'
    assert len(line) == 512  # the longest header read
    assert decode(line + b"\n" + b"\0" * MAX_PIECE) == Piece("x", 2**31 - 1, b"\0" * MAX_PIECE)
    assert decode(encode(Failed("x", "r" * 300))) == Failed("x", "r" * 200)  # cut, not refused
    assert len(json.loads(encode(Failed("x", "r" * 300)).split(b"\n")[0])["reason"]) == 200
    long = json.dumps({"from": "x", "k": "failed", "reason": "r" * 300}).encode() + b"\n"
    assert decode(long) == Failed("x", "r" * 200)
    assert decode('{"from": "kök", "k": "claim", "key": "k"}\n'.encode()) == Claim("kök", "k")


def test_what_is_ignored_is_counted_and_what_is_kept_is_sized_as_holding_it_costs() -> None:
    claim = encode(Claim("den", "k"))
    cost = len(claim) + MESSAGE_COST  # a 37-byte claim costs ten times that as objects
    channel = Channel(limit=2 * cost)  # room for exactly two
    assert channel.receive(b"junk") is None and channel.receive(b"more junk") is None
    assert channel.receive(claim) == channel.receive(claim) == Claim("den", "k")
    assert channel.receive(claim) is None  # the third is past the limit
    assert (channel.ignored, channel.size, len(channel.messages)) == (3, 2 * cost, 2)


def test_a_flood_past_the_limit_is_ignored_not_kept() -> None:
    leader = Leader("den")
    channel = Channel(limit=3 * (MAX_PIECE + 100 + MESSAGE_COST))
    for payload in leader.audio(b"\0" * MAX_PIECE * 10):
        channel.receive(payload)
    assert len(channel.messages) == 3 and channel.ignored == 7
    assert channel.size <= 3 * (MAX_PIECE + 100 + MESSAGE_COST)


def test_a_flood_of_claims_is_kept_to_a_few_and_the_audio_still_follows() -> None:
    """455,000 claims once grew a daemon to 1.7 GB and kept it scanning them: a channel keeps
    32, and the audio of the leader among them is followed as before."""
    leader = Leader("den")
    channel = channel_of(encode(Claim("den", "k")), limit=16 << 20)
    for n in range(10_000):
        channel.receive(encode(Claim(f"flood-{n}", "k")))
    follower = Follower(channel, "den", "k")
    for payload in [*leader.audio(b"ab"), leader.end()]:
        channel.receive(payload)
    assert follower.take() == [b"ab"] and follower.done
    assert sum(isinstance(m, Claim) for m in channel.messages) == 32
    assert channel.size < 32 * (100 + MESSAGE_COST) + 1000


GROUP_KEY = b"0123456789abcdef"
TOPIC = "edge-tts/group/downstairs/speech/0123456789abcdef"


def test_signed_messages_are_believed_only_with_the_key_and_for_their_topic() -> None:
    message = encode(Piece("den", 0, b"\x01\x02"))
    signed = sign(GROUP_KEY, TOPIC, message)
    assert signed != message and verified(GROUP_KEY, TOPIC, signed) == message
    assert decode(verified(GROUP_KEY, TOPIC, signed) or b"") == Piece("den", 0, b"\x01\x02")
    assert verified(b"another key, 16+", TOPIC, signed) is None  # a wrong key
    assert verified(GROUP_KEY, TOPIC + "0", signed) is None  # replayed on another topic
    assert verified(GROUP_KEY, TOPIC, message) is None  # not signed at all
    assert verified(GROUP_KEY, TOPIC, signed[:-1] + b"\x03") is None  # the body changed
    forged = signed.replace(b'"den"', b'"mal"')
    assert verified(GROUP_KEY, TOPIC, forged) is None  # the header changed
    for junk in (b"", b"\n", b'{"sig": "x"}\n', signed.split(b"\n")[0]):
        assert verified(GROUP_KEY, TOPIC, junk) is None


def test_with_a_key_a_channel_follows_only_what_was_signed_for_it() -> None:
    """A stranger who watches the topic answers the real claim at once, under the
    claimant's name, with its own pieces and a matching end: ignored, and the real leader's
    audio is followed."""
    verify = functools.partial(verified, GROUP_KEY, TOPIC)
    channel = Channel(1 << 20, verify)
    real, spoof = Leader("den"), Leader("den")

    def signed(payload: bytes) -> bytes:
        return sign(GROUP_KEY, TOPIC, payload)

    channel.receive(signed(encode(Claim("den", "k"))))
    follower = Follower(channel, "den", "k")
    for payload in [*spoof.audio(b"NOISE"), spoof.end()]:
        assert channel.receive(payload) is None
    for payload in [*spoof.audio(b"NOISE"), spoof.end()]:  # signed with another key
        assert channel.receive(sign(b"a guessed key 16", TOPIC, payload)) is None
    for payload in [*real.audio(b"speech"), real.end()]:
        channel.receive(signed(payload))
    assert follower.take() == [b"speech"] and follower.done
    assert channel.ignored == 4


# --- topics and play_at ------------------------------------------------------------------


def test_topics_route_what_a_device_listens_to() -> None:
    topics = Topics.of("edge-tts", "den", ("all", "downstairs"))
    assert topics.route("edge-tts/den/say") == Route(Kind.SAY)
    assert topics.route("edge-tts/all/say") == Route(Kind.SAY, "all")
    assert topics.route("edge-tts/group/downstairs/say") == Route(Kind.SAY, "downstairs")
    assert topics.route("edge-tts/group/all/stop") == Route(Kind.STOP, "all")
    assert topics.route("edge-tts/group/downstairs/speech/abc") == Route(
        Kind.SPEECH, "downstairs", "abc"
    )
    assert topics.route("edge-tts/hall/availability") == Route(Kind.AVAILABILITY, member="hall")
    for foreign in (
        "edge-tts/group/upstairs/say",  # not a member
        "edge-tts/group/downstairs/speech/",
        "edge-tts/group/downstairs/speech/a/b",
        "edge-tts/group/downstairs/shout",
        "edge-tts/hall/say",
        "other/den/say",
    ):
        assert topics.route(foreign) is None, foreign
    subscribed = dict(topics.subscriptions())
    assert subscribed["edge-tts/group/downstairs/say"] == 1
    shared = dict(topics.shared())  # on a connection of its own: no flood there delays a say
    assert shared["edge-tts/group/downstairs/speech/+"] == 0  # audio is of no use later
    assert not set(shared) & set(subscribed)


def say(fields: dict[str, object]) -> object:
    return parse_payload(json.dumps(fields).encode(), voices={"default"}, max_chars=100)


def test_play_at_is_a_moment_with_its_zone_or_epoch_seconds() -> None:
    now = time.time()
    a = say({"text": "hi", "play_at": now + 2})
    assert a.play_at == pytest.approx(now + 2)  # type: ignore[attr-defined]
    a = say({"text": "hi", "play_at": "2026-11-25T08:00:00.250+01:00"})  # a day ago
    assert a.play_at == 1795590000.25  # type: ignore[attr-defined]
    a = say({"text": "hi", "play_at": "2026-11-25T07:00:00Z"})
    assert a.play_at == 1795590000.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("2026-11-26T08:00:00", "'play_at' must be an ISO 8601 time with its offset"),
        ("tomorrow", "'play_at' must be an ISO 8601 time with its offset"),
        (True, "'play_at' must be an ISO 8601 time"),
        ([1], "'play_at' must be an ISO 8601 time"),
        (1e400, "JSON has Infinity"),
        ("x" * 100, "'play_at' must be an ISO 8601 time"),
        ("AHEAD", "'play_at' is 3660 s ahead, more than an hour"),  # from when it runs
    ],
)
def test_a_bad_play_at_is_refused_with_a_reason(value: object, says: str) -> None:
    if value == "AHEAD":
        value = time.time() + MAX_PLAY_AHEAD_S + 60.4
    with pytest.raises(BadAnnouncement, match=says):
        say({"text": "hi", "play_at": value})


def test_a_clock_behind_the_senders_keeps_the_senders_delay() -> None:
    now = 1_800_000_000.0
    # In step (within the limit), or no sent_at, or no play_at: play_at as sent.
    assert play_moment(now + 1, now + CLOCKS_APART_S, now) == (now + 1, None)
    assert play_moment(now + 1, None, now) == (now + 1, None)
    assert play_moment(None, now + 60, now) == (None, None)
    # Sent "60 s from now": this clock is 60 s behind; play 1 s after receiving, as meant.
    at, warning = play_moment(now + 61, now + 60, now)
    assert at == now + 1
    assert warning is not None and "60 s ahead of this one" in warning
    # Sent long ago (it waited in the broker): as sent, late or too late, never moved.
    assert play_moment(now - 299, now - 300, now) == (now - 299, None)
    assert too_late(now - 299, now, 900) is None
    assert (
        too_late(now - 901, now, 900) == "too late: play_at was 901 s ago (announcements.max_age_s)"
    )
