"""Several rooms, one voice: a group announcement is synthesized by one member and shared with
the others over MQTT as its audio arrives (the messages and their rules are in
`protocols/share.py`).

`Groups` keeps what this member has heard on its groups' speech topics (each a `Channel`,
bounded in size and number, and all of them together in what they cost) and whether each
member is online (its retained availability). With a group key it signs what it publishes
and believes only what is signed; without one, what it follows is played, never cached
(`trusted`).
`join` tells a member about to synthesize a group announcement its part: `Leading` (it
synthesizes and `tee`s the audio to the others) or `Following` (its `audio` is the leader's,
checked piece by piece, and breaks with SynthesisError when the leader stops, falls silent or
goes offline, so the speaker says the rest itself).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from .announcement import Announcement
from .errors import SynthesisError
from .mqtt import Topics
from .protocols.share import (
    MESSAGE_COST,
    Channel,
    Claim,
    Follower,
    Leader,
    ShareError,
    encode,
    sign,
    verified,
)

log = logging.getLogger(__name__)

_CLAIM_S = 0.5  # the broker echoes a claim in milliseconds; past this, lead (and share)
_KEEP = 6  # channels kept; the oldest goes first
_KEEP_S = 600.0  # a channel nobody here joined is forgotten after this long
_CHANNEL_BYTES = 16 * 1024 * 1024  # one announcement's audio and messages, at most
_ALL_BYTES = 24 * 1024 * 1024  # every channel's together: room for one long announcement

_MEMBERS = 1024  # devices known online, at most (a flood of availability topics stops there)
_ATTEMPTS = 2  # elections for one announcement: the first, and one if its leader gives nothing

Publish = Callable[[str, bytes], None]


def speech_key(group: str, announcement_id: str, attempt: int = 1) -> str:
    """The announcement's key in its group's speech topics (one topic per election): the
    same on every member (the announcement's id is, see the daemon), and safe in a topic
    whatever the id holds."""
    name = announcement_id if attempt == 1 else f"{announcement_id}\n{attempt}"
    return hashlib.sha256(f"{group}\n{name}".encode()).hexdigest()[:16]


@dataclass
class _Topic:
    name: str
    channel: Channel
    born: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    joined: bool = False  # this member plays from it: kept until the announcement is over

    def wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class Groups:
    """This member's view of its groups' speech topics."""

    def __init__(
        self, member: str, topics: Topics, publish: Publish, key: bytes | None = None
    ) -> None:
        self.member = member
        self._topics = topics
        self._key = key
        self._publish: Publish = (
            publish if key is None else lambda topic, m: publish(topic, sign(key, topic, m))
        )
        self._channels: dict[str, _Topic] = {}
        self._online: set[str] = {member}  # members whose retained availability says online
        self.ignored = 0  # messages on speech topics that were not ours to use
        self.led = 0  # group announcements this member synthesized and shared
        self.followed = 0  # ... for which another member was elected to synthesize
        self.elections = 0  # ... it took part in electing who synthesizes (again, too)

    @property
    def trusted(self) -> bool:
        """Whether what is followed may be kept: only a holder of the group key can have
        sent it."""
        return self._key is not None

    def as_dict(self) -> dict[str, object]:
        """For the stats: how many group announcements went which way here."""
        return {
            "groups": list(self._topics.groups),
            "led": self.led,
            "followed": self.followed,
            "elections": self.elections,
            "ignored_messages": self.ignored,
            "signed": self.trusted,
        }

    def receive(self, group: str, key: str, payload: bytes) -> None:
        """A message on `<prefix>/group/<group>/speech/<key>`."""
        topic = self._topic(group, key)
        self._make_room(len(payload) + MESSAGE_COST, keep=topic)
        if topic.channel.receive(payload) is None:
            self.ignored += 1
            log.debug("group %s: ignored a message on speech/%s", group, key)
        topic.wake()

    def availability(self, member: str, online: bool) -> None:
        """A member's retained availability: a leader going offline ends what it shares."""
        if online:
            if len(self._online) < _MEMBERS:
                self._online.add(member)
            return
        self._online.discard(member)
        for topic in self._channels.values():
            topic.wake()

    def forget(self, a: Announcement) -> None:
        """The announcement is over here: its channel may go."""
        if a.group is not None:
            for attempt in range(1, _ATTEMPTS + 1):
                self._channels.pop(speech_key(a.group, a.id, attempt), None)

    async def join(self, a: Announcement, key: str, attempt: int = 1) -> Leading | Following | None:
        """This member's part in speaking group announcement `a`, whose speech `key` (the
        cache key) names what would be asked of the cloud, in election `attempt`; None if it
        is not shared."""
        if a.group is None or a.group not in self._topics.groups:
            return None
        topic = self._topic(a.group, speech_key(a.group, a.id, attempt))
        topic.joined = True
        self.elections += 1
        leader = topic.channel.leader(key, self._online)
        if leader is None:
            self._publish(topic.name, encode(Claim(self.member, key)))
            try:
                async with asyncio.timeout(_CLAIM_S):
                    while (leader := topic.channel.leader(key, self._online)) is None:
                        await topic.changed.wait()
            except TimeoutError:
                log.info("announcement %s: no claim came back; leading %s", a.id, a.group)
                leader = self.member
        if leader == self.member:
            log.info("announcement %s: synthesizing it for %s", a.id, a.group)
            self.led += 1
            return Leading(topic.name, Leader(self.member), self._publish)
        log.info("announcement %s: %s synthesizes it for %s", a.id, leader, a.group)
        self.followed += 1
        return Following(topic, leader, key, self._online)

    def _topic(self, group: str, key: str) -> _Topic:
        topic = self._channels.get(key)
        if topic is not None:
            return topic
        # Room for it: channels nobody here joined go, stale ones first, then the oldest; a
        # joined one stays (a flood of keys must not cut off the audio being played).
        now = time.monotonic()
        idle = [k for k, t in self._channels.items() if not t.joined]
        for old in [k for k in idle if now - self._channels[k].born > _KEEP_S]:
            del self._channels[old]
            idle.remove(old)
        while len(self._channels) >= _KEEP and idle:
            del self._channels[idle.pop(0)]
        name = self._topics.speech(group, key)
        verify = None if self._key is None else functools.partial(verified, self._key, name)
        topic = _Topic(name, Channel(_CHANNEL_BYTES, verify))
        self._channels[key] = topic
        return topic

    def _make_room(self, cost: int, keep: _Topic) -> None:
        """Every channel's messages together stay within _ALL_BYTES: the channels nobody here
        plays from go, oldest first, for what arrives (and if the ones played fill it, what
        arrives is ignored by its channel's own limit soon enough)."""
        total = sum(t.channel.size for t in self._channels.values())
        for k, t in list(self._channels.items()):
            if total + cost <= _ALL_BYTES:
                return
            if t is not keep and not t.joined:
                total -= t.channel.size
                del self._channels[k]


class Leading:
    """The member that synthesizes: what it plays is published as it is produced."""

    def __init__(self, topic: str, leader: Leader, publish: Publish) -> None:
        self._topic = topic
        self._leader = leader
        self._publish = publish

    def fail(self, reason: str) -> None:
        """Nothing will be shared: the members waiting for it speak for themselves."""
        self._publish(self._topic, self._leader.failed(reason))

    async def tee(self, audio: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """`audio`, published piece by piece as it comes; its end, or why it ended early."""
        ended: str | None = "stopped playing it"
        try:
            async with aclosing(audio) as chunks:
                async for chunk in chunks:
                    for message in self._leader.audio(chunk):
                        self._publish(self._topic, message)
                    yield chunk
            ended = None
            self._publish(self._topic, self._leader.end())
        except SynthesisError as exc:
            ended = exc.reason
            raise
        finally:
            if ended is not None:
                self._publish(self._topic, self._leader.failed(ended))


class Following:
    """A member that plays the leader's audio."""

    def __init__(self, topic: _Topic, leader: str, key: str, online: set[str]) -> None:
        self.leader = leader
        self._key = key
        self._topic = topic
        self._online = online  # the group's view, kept up to date

    async def audio(self, stall_s: float) -> AsyncGenerator[bytes, None]:
        """The leader's audio as it comes; SynthesisError if a piece is missing, the leader
        fails, goes offline, or sends nothing for `stall_s`."""
        follower = Follower(self._topic.channel, self.leader, self._key)
        while True:
            # Taken before reading: what arrives while the audio is handed on (at the yield
            # below) sets this one, so it is never slept through.
            changed = self._topic.changed
            try:
                new = follower.take()
            except ShareError as exc:
                raise SynthesisError(exc.reason) from None
            for pcm in new:
                yield pcm
            if follower.done:
                return
            if self.leader not in self._online:
                raise SynthesisError(f"{self.leader}, which was sharing it, went offline")
            try:
                async with asyncio.timeout(stall_s):
                    await changed.wait()
            except TimeoutError:
                raise SynthesisError(
                    f"{self.leader}, which was sharing it, sent nothing for {stall_s:g} s"
                ) from None
