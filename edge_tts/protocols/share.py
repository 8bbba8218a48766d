"""How the members of a group share one synthesis, as messages and a state machine: no socket,
no clock, no asyncio.

Every group announcement has a topic of its own, `<prefix>/group/<group>/speech/<key>`. A
member that must synthesize it (its phrase cache does not hold it) publishes a claim naming
the cache key of what it would ask the cloud for; the first claim the broker delivers with
the member's own key names the leader (the broker hands every subscriber the messages of a
topic in one order, so every member agrees without another round trip). The leader publishes
the audio as it arrives, numbered, then an end saying how many pieces and bytes there were;
or a failure with its reason. A follower checks it has every piece in order: a gap, a
failure or an end that does not add up breaks the stream, and the follower says the rest
itself.

Each message is one line of JSON (at most `_MAX_HEADER` bytes), a newline, and for audio
the PCM. Anything else is ignored and counted: a broken publisher can make a member speak
for itself, never crash it. Only members seen online (their retained availability) are
followed.

Who may be believed: with a group key (`device.group_key`, the same on every member), every
message carries `"sig"`, an HMAC-SHA256 of its topic, its header and its body under the
key, and a message without it, or with a wrong one, is ignored: only a holder of the key can
be followed (and what is followed may be kept in the phrase cache). Without a key, anyone
who may publish on the broker's edge-tts topics may answer a claim with audio of their own:
members then play shared audio but never keep it, so a spoof costs one announcement, not
every later one. A channel holds at most `limit` bytes, each message counted with what
holding it costs, and at most `_CLAIMS` claims, so a flood of them costs a bounded amount.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Container
from dataclasses import dataclass

_MAX_HEADER = 512
MAX_PIECE = 64 * 1024  # bytes of PCM in one message; the leader cuts larger chunks
# What holding one message costs beyond its payload (its Python objects: the message, its
# header's strings, the list's slot), counted against a channel's limit with the payload.
MESSAGE_COST = 400
_CLAIMS = 32  # claims a channel keeps: far more members than a house has rooms
_SIG = 32  # hex digits of the HMAC kept in a message


@dataclass(frozen=True)
class Claim:
    """`member` would synthesize it, asking the cloud for what `key` names."""

    member: str
    key: str


@dataclass(frozen=True)
class Piece:
    """The leader's `seq`th piece of audio (from 0)."""

    member: str
    seq: int
    pcm: bytes


@dataclass(frozen=True)
class End:
    """The leader's audio is complete: so many pieces, so many bytes."""

    member: str
    pieces: int
    size: int


@dataclass(frozen=True)
class Failed:
    """The leader will send no more: why."""

    member: str
    reason: str


Message = Claim | Piece | End | Failed


class ShareError(Exception):
    """A message that is not one of ours, or a leader's stream that cannot be played on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(message: Message) -> bytes:
    body = b""
    header: dict[str, object] = {"from": message.member}
    if isinstance(message, Claim):
        header |= {"k": "claim", "key": message.key}
    elif isinstance(message, Piece):
        header |= {"k": "audio", "seq": message.seq}
        body = message.pcm
    elif isinstance(message, End):
        header |= {"k": "end", "pieces": message.pieces, "bytes": message.size}
    else:
        header |= {"k": "failed", "reason": message.reason[:200]}
    return json.dumps(header, ensure_ascii=True).encode() + b"\n" + body


def decode(payload: bytes) -> Message:
    """The message in `payload`; ShareError if it is not one."""
    line, newline, body = payload.partition(b"\n")
    if not newline or len(line) > _MAX_HEADER:
        raise ShareError("not a speech message (no header line)")
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise ShareError("the header is not JSON") from None
    if not isinstance(header, dict):
        raise ShareError("the header is not a JSON object")
    member, kind = header.get("from"), header.get("k")
    if not isinstance(member, str) or not member:
        raise ShareError("no sender")
    if kind == "claim" and isinstance(header.get("key"), str) and not body:
        return Claim(member, header["key"])
    if kind == "audio" and _count(header.get("seq")) and len(body) <= MAX_PIECE:
        return Piece(member, header["seq"], body)
    if kind == "end" and _count(header.get("pieces")) and _count(header.get("bytes")):
        return End(member, header["pieces"], header["bytes"])
    if kind == "failed" and isinstance(header.get("reason"), str):
        return Failed(member, header["reason"][:200])
    raise ShareError(f"not a speech message of a known kind ({str(kind)[:20]!r})")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def sign(key: bytes, topic: str, payload: bytes) -> bytes:
    """`payload` (one of `encode`'s) with its signature added to its header, last."""
    line, _, body = payload.partition(b"\n")
    mac = _mac(key, topic, line, body)
    return line[:-1] + b', "sig": "' + mac.encode() + b'"}\n' + body


def verified(key: bytes, topic: str, payload: bytes) -> bytes | None:
    """`payload` without its signature if it was signed under `key` for `topic`, else None."""
    line, newline, body = payload.partition(b"\n")
    suffix_at = len(line) - len(b', "sig": "') - _SIG - 2
    if not newline or suffix_at < 1 or not line.endswith(b'"}'):
        return None
    unsigned, suffix = line[:suffix_at] + b"}", line[suffix_at:]
    mac = suffix[len(b', "sig": "') : -2]
    if not suffix.startswith(b', "sig": "') or not hmac.compare_digest(
        mac, _mac(key, topic, unsigned, body).encode()
    ):
        return None
    return unsigned + b"\n" + body


def _mac(key: bytes, topic: str, line: bytes, body: bytes) -> str:
    signed = topic.encode() + b"\n" + line + b"\n" + body
    return hmac.new(key, signed, hashlib.sha256).hexdigest()[:_SIG]


class Channel:
    """One group announcement's speech topic, as one member has seen it: every well-formed
    message (and, given `verify`, only those it passes), in the order the broker delivered
    them, up to `limit` bytes as holding them costs, and at most `_CLAIMS` claims."""

    def __init__(self, limit: int, verify: Callable[[bytes], bytes | None] | None = None) -> None:
        self.messages: list[Message] = []
        self.size = 0  # what the messages held cost, in bytes
        self.ignored = 0  # messages that were not ours, or past the limits
        self._limit = limit
        self._verify = verify
        self._claims = 0

    def receive(self, payload: bytes) -> Message | None:
        """Take one message; the message, or None if it was ignored."""
        cost = len(payload) + MESSAGE_COST
        if self.size + cost > self._limit:
            self.ignored += 1
            return None
        unsigned = payload if self._verify is None else self._verify(payload)
        try:
            if unsigned is None:
                raise ShareError("not signed with the group's key")
            message = decode(unsigned)
        except ShareError:
            self.ignored += 1
            return None
        if isinstance(message, Claim):
            if self._claims >= _CLAIMS:
                self.ignored += 1
                return None
            self._claims += 1
        self.size += cost
        self.messages.append(message)
        return message

    def leader(self, key: str, members: Container[str] | None = None) -> str | None:
        """The member whose claim for `key` came first, if any did; only claims of `members`
        (those known online) count, if given."""
        return next(
            (
                m.member
                for m in self.messages
                if isinstance(m, Claim)
                and m.key == key
                and (members is None or m.member in members)
            ),
            None,
        )


class Follower:
    """Reads the leader's audio out of a channel: every piece in order after the claim for
    `key` that made it the leader (what came before under its name is not its), then its end.
    `take` returns what is new since the last call; `done` once the end was read."""

    def __init__(self, channel: Channel, leader: str, key: str) -> None:
        self.leader = leader
        self.done = False
        self.pieces = 0
        self.size = 0
        self._channel = channel
        self._at = next(
            (
                i + 1
                for i, m in enumerate(channel.messages)
                if isinstance(m, Claim) and m.member == leader and m.key == key
            ),
            len(channel.messages),
        )

    def take(self) -> list[bytes]:
        """The new audio, in order; ShareError when the stream breaks (a piece missing, the
        leader's failure, an end that does not add up)."""
        new: list[bytes] = []
        messages = self._channel.messages
        while not self.done and self._at < len(messages):
            message = messages[self._at]
            self._at += 1
            if message.member != self.leader:
                continue
            if isinstance(message, Piece):
                if message.seq != self.pieces:
                    raise ShareError(
                        f"piece {self.pieces} from {self.leader} never came (got {message.seq})"
                    )
                self.pieces += 1
                self.size += len(message.pcm)
                new.append(message.pcm)
            elif isinstance(message, End):
                if (message.pieces, message.size) != (self.pieces, self.size):
                    raise ShareError(
                        f"{self.leader} sent {message.pieces} pieces ({message.size} bytes), "
                        f"{self.pieces} ({self.size} bytes) came"
                    )
                self.done = True
            elif isinstance(message, Failed):
                raise ShareError(f"{self.leader} stopped sharing: {message.reason}")
        return new


class Leader:
    """The messages a leader publishes: its audio cut into numbered pieces, then the end."""

    def __init__(self, member: str) -> None:
        self.member = member
        self.pieces = 0
        self.size = 0

    def audio(self, pcm: bytes) -> list[bytes]:
        out = []
        for at in range(0, len(pcm), MAX_PIECE):
            piece = pcm[at : at + MAX_PIECE]
            out.append(encode(Piece(self.member, self.pieces, piece)))
            self.pieces += 1
            self.size += len(piece)
        return out

    def end(self) -> bytes:
        return encode(End(self.member, self.pieces, self.size))

    def failed(self, reason: str) -> bytes:
        return encode(Failed(self.member, reason))
