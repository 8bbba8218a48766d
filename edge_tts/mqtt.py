"""The broker session: subscribe to say/stop, publish availability, state and events, and
reconnect with backoff whenever the broker goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .backoff import Backoff
from .config import GROUP_NAME, DeviceConfig, MqttConfig
from .trust import system_context, untrusted

log = logging.getLogger(__name__)

_OUTBOX_MAX = 1000
_SPEECH_MAX_BYTES = 8 * 1024 * 1024  # a group's audio waiting to go out, at most
_MAX_TOPIC_BYTES = 65_535  # what an MQTT string can hold


class Kind(StrEnum):
    """What a message on one of our topics asks."""

    SAY = "say"
    STOP = "stop"
    SPEECH = "speech"  # a group announcement's claims and audio, between its members
    AVAILABILITY = "availability"  # a device's online/offline (a leader may go away)


@dataclass(frozen=True)
class Route:
    """Where a message came in: what it asks, and the group it was sent to (if any)."""

    kind: Kind
    group: str | None = None
    key: str | None = None  # speech: the announcement's key in its group
    member: str | None = None  # availability: whose


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, derived from the prefix, the device name and its groups."""

    say: str
    all_say: str
    stop: str
    availability: str
    state: str
    event: str
    stats: str
    prefix: str = "edge-tts"
    groups: tuple[str, ...] = ("all",)

    @classmethod
    def of(cls, prefix: str, device: str, groups: tuple[str, ...] = ("all",)) -> Topics:
        base = f"{prefix}/{device}"
        return cls(
            say=f"{base}/say",
            all_say=f"{prefix}/all/say",
            stop=f"{base}/stop",
            availability=f"{base}/availability",
            state=f"{base}/state",
            event=f"{base}/event",
            stats=f"{base}/stats",
            prefix=prefix,
            groups=groups,
        )

    def group(self, group: str, what: str) -> str:
        """`<prefix>/group/<group>/<what>`: say, stop, or speech/<key>."""
        return f"{self.prefix}/group/{group}/{what}"

    def speech(self, group: str, key: str) -> str:
        return self.group(group, f"speech/{key}")

    def subscriptions(self) -> list[tuple[str, int]]:
        """Announcements and stops, at QoS 1 (kept for us while we are away): the session's."""
        topics = [(self.say, 1), (self.all_say, 1), (self.stop, 1)]
        for group in self.groups:
            topics += [(self.group(group, "say"), 1), (self.group(group, "stop"), 1)]
        return topics

    def shared(self) -> list[tuple[str, int]]:
        """What the members of a group tell each other, on a connection of its own: each
        group's speech, and who is online (a member sharing an announcement may go away
        mid-way); at QoS 0, of use only as it happens."""
        topics = [(self.group(group, "speech/+"), 0) for group in self.groups]
        return [*topics, (f"{self.prefix}/+/availability", 0)]

    def route(self, topic: str) -> Route | None:
        """What a message on `topic` asks; None for a topic that is not ours."""
        if topic == self.say:
            return Route(Kind.SAY)
        if topic == self.stop:
            return Route(Kind.STOP)
        if topic == self.all_say:
            return Route(Kind.SAY, "all")
        head = f"{self.prefix}/group/"
        if not topic.startswith(head):
            member, _, rest = topic.removeprefix(f"{self.prefix}/").partition("/")
            if topic.startswith(f"{self.prefix}/") and rest == Kind.AVAILABILITY and member:
                return Route(Kind.AVAILABILITY, member=member)
            return None
        group, _, rest = topic[len(head) :].partition("/")
        if group not in self.groups:
            return None
        if rest in (Kind.SAY, Kind.STOP):
            return Route(Kind(rest), group)
        kind, _, key = rest.partition("/")
        if kind == Kind.SPEECH and key and "/" not in key:
            return Route(Kind.SPEECH, group, key)
        return None


class Lanes:
    """What the groups' connection (`Topics.shared`) delivered and the daemon has not handled
    yet, in two lanes taken in turn: members' availability first (a leader that went away),
    then a group's speech (claims and audio). Speech (any member, or anyone who may publish
    there, can send it in numbers) is held to SPEECH_BYTES as its messages cost (the oldest go
    first, and a follower that misses a piece says the rest itself), availability to
    AVAILABILITY messages. Both arrive at QoS 0: what is let go is owed no
    acknowledgement."""

    SPEECH_BYTES = 4 * 1024 * 1024
    AVAILABILITY = 2048
    MESSAGE_COST = 1000  # a delivered message's objects (paho's, aiomqtt's, the topic)

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self._availability: deque[aiomqtt.Message] = deque()
        self._speech: deque[tuple[aiomqtt.Message, int]] = deque()
        self._speech_bytes = 0
        self.dropped = 0  # speech and availability let go unhandled (a flood)

    def __len__(self) -> int:
        return len(self._availability) + len(self._speech)

    def append(self, message: aiomqtt.Message) -> None:
        route = self._topics.route(str(message.topic))
        kind = route.kind if route is not None else None
        if kind == Kind.SPEECH:
            payload = message.payload
            cost = (len(payload) if isinstance(payload, bytes | bytearray) else 0) + (
                self.MESSAGE_COST
            )
            self._speech.append((message, cost))
            self._speech_bytes += cost
            while self._speech_bytes > self.SPEECH_BYTES:
                self._speech_bytes -= self._speech.popleft()[1]
                self._dropped()
        else:  # availability (nothing else is subscribed on that connection)
            self._availability.append(message)
            if len(self._availability) > self.AVAILABILITY:
                self._availability.popleft()
                self._dropped()

    def popleft(self) -> aiomqtt.Message:
        if self._availability:
            return self._availability.popleft()
        message, cost = self._speech.popleft()
        self._speech_bytes -= cost
        return message

    def _dropped(self) -> None:
        if not self.dropped % 10_000:
            log.warning(
                "MQTT: a flood on the group topics; %d messages let go unhandled so far",
                self.dropped + 1,
            )
        self.dropped += 1


def inbox(lanes: Callable[[], Lanes]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's queue of delivered messages, holding them in `Lanes` (the container an
    asyncio.Queue subclass chooses in `_init`, as LifoQueue and PriorityQueue do)."""

    class Inbox(asyncio.Queue[aiomqtt.Message]):
        def _init(self, maxsize: int) -> None:
            self._queue = lanes()

    return Inbox


@dataclass(frozen=True)
class Incoming:
    """A message on one of our topics, as the broker delivered it."""

    topic: str
    payload: bytes
    mid: int = 0  # the broker's packet id: the same when it delivers a message again
    route: Route | None = None  # what it asks (Topics.route), decided once, as it came in


# Awaited before the message is acknowledged: when it returns, the message is safe with us.
OnMessage = Callable[[Incoming], Awaitable[None]]


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    ca_file = config.tls.ca_file
    context = ssl.create_default_context(cafile=ca_file) if ca_file else system_context()
    if config.tls.cert_file:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


def make_client(
    config: MqttConfig,
    *,
    identifier: str | None = None,
    will: aiomqtt.Will | None = None,
    timeout: float | None = None,
    persistent: bool = False,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
) -> aiomqtt.Client:
    """A client for the broker; `persistent`: an MQTT 5 session that outlives a disconnect
    by mqtt.session_expiry_s, so QoS 1 announcements published meanwhile are kept for us."""
    session: dict[str, object] = {}
    if persistent and config.session_expiry_s > 0:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = config.session_expiry_s
        session = {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": False,
            "properties": properties,
        }
    return aiomqtt.Client(
        config.host,
        config.port,
        username=config.username,
        password=config.password.reveal() if config.password else None,
        identifier=identifier,
        will=will,
        keepalive=config.keepalive_s,
        tls_context=tls_context(config),
        timeout=timeout,
        # Events and state go out at once, not held back by Nagle's algorithm (~40 ms).
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        queue_type=queue_type,
        **session,  # type: ignore[arg-type]
    )


def describe_error(exc: aiomqtt.MqttError) -> str:
    """A readable cause for a broker error (never containing credentials)."""
    cause = exc.__cause__ or exc.__context__  # aiomqtt raises its error `from None`
    if isinstance(cause, ssl.SSLCertVerificationError):
        return untrusted(
            "the broker",
            cause,
            names="is mqtt.host a name on its certificate? is something in between?",
            authorities="does mqtt.tls.ca_file name the authority that signed its certificate "
            "(none: the system's)?",
        )
    text = str(exc)
    if "Not authorized" in text or "Bad user name or password" in text:
        return "the broker refused the username or password"
    return text or type(exc).__name__


def _read_topics(path: Path | None) -> list[str]:
    """The topics noted at `path` (none if there is no note, or it cannot be read)."""
    if path is None:
        return []
    try:
        topics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [t for t in topics if isinstance(t, str)] if isinstance(topics, list) else []


def _our_filter(topic: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a noted topic is one this daemon could have subscribed to: under one of its
    prefixes and a well-formed filter (a damaged note must not have the broker end the
    session)."""
    levels = topic.split("/")
    return (
        topic.startswith(tuple(f"{prefix}/" for prefix in prefixes))
        and len(topic.encode()) <= _MAX_TOPIC_BYTES
        and "\0" not in topic
        and all(level in ("+", "#") or not {"+", "#"} & set(level) for level in levels)
        and "#" not in levels[:-1]
    )


def _write_topics(path: Path | None, topics: list[str]) -> None:
    """Note `topics` at `path` when they changed (written whole, then renamed into place)."""
    if path is None or _read_topics(path) == topics:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        part.write_text(json.dumps(topics), encoding="utf-8")
        part.replace(path)
    except OSError as exc:
        log.debug("MQTT: cannot note the subscriptions in %s: %s", path, exc.strerror)


_STATS_MAX_BYTES = 64 * 1024  # another device's retained stats: a few hundred bytes

# Each other device and the groups it is in; None: in which, unknown (its stats are not seen).
Members = dict[str, set[str] | None]


async def memberships(
    client: aiomqtt.Client, prefix: str, me: str, timeout_s: float = 10
) -> Members:
    """The other devices the broker knows (a retained availability or stats of theirs) and the
    groups each is in, as its retained stats say, read without guessing a wait: retained
    messages come before the echo of a probe published after subscribing. TimeoutError when
    the probe does not come back in `timeout_s` (an ACL that refuses it)."""
    probe = f"{prefix}/{me}/probe/{uuid.uuid4().hex}"
    await client.subscribe([(f"{prefix}/+/availability", 1), (f"{prefix}/+/stats", 1), (probe, 1)])
    await client.publish(probe, b"", qos=1)
    found: Members = {}
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            topic = str(message.topic)
            if topic == probe:
                break
            device, _, what = topic.removeprefix(f"{prefix}/").partition("/")
            payload = message.payload
            if device == me or not isinstance(payload, bytes) or not payload:
                continue  # ours, or cleared: a device removed
            groups = _groups_in_stats(payload) if what == "stats" else None
            if groups is not None or device not in found:
                found[device] = groups
    return found


def orphans(groups: Iterable[str], others: Members) -> list[str]:
    """Those of `groups` no other device is in: none while a device's groups are unknown."""
    return [
        g
        for g in groups
        if all(of is not None and g not in of and g != "all" for of in others.values())
    ]


def _groups_in_stats(payload: bytes) -> set[str] | None:
    """The groups a device's stats name (`groups.groups`); None from anything else (any client
    may publish there: the worst it can do is keep a group's entity)."""
    if len(payload) > _STATS_MAX_BYTES:
        return None
    try:
        stats = json.loads(payload)
    except ValueError:
        return None
    groups = stats.get("groups") if isinstance(stats, dict) else None
    names = groups.get("groups") if isinstance(groups, dict) else None
    if not isinstance(names, list) or not all(isinstance(g, str) for g in names):
        return None
    return set(names)


def _bytes(payload: object) -> bytes:
    """A message's payload as bytes (paho hands bytes; aiomqtt's type allows more)."""
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def _groups_of(topics: list[str], prefix: str) -> list[str]:
    """The groups whose `say` topic is among `topics` (a group a config could name: the
    topics come from a note on disk)."""
    head, tail = f"{prefix}/group/", "/say"
    names = [t[len(head) : -len(tail)] for t in topics if t.startswith(head) and t.endswith(tail)]
    return [name for name in names if GROUP_NAME.fullmatch(name)]


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for its end. On Python 3.11 a cancellation that lands while an
    aiomqtt publish completes can be swallowed (asyncio.wait_for's race), leaving the task
    running; it is cancelled again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.cancelled() and task.exception() is not None:
        log.debug("MQTT sender ended: %s", task.exception())


class MqttLink:
    """Keeps a session with the broker for one device and hands `say`/`stop` messages on."""

    def __init__(
        self,
        config: MqttConfig,
        device: DeviceConfig,
        on_message: OnMessage,
        subscribed: Path | None = None,
        members_timeout_s: float = 10,
    ) -> None:
        self._config = config
        # Where the last run's subscriptions are noted: the broker keeps them in our session
        # (mqtt.session_expiry_s), so what this run no longer wants (a group left) is
        # unsubscribed, not delivered for good.
        self._subscribed = subscribed
        self._members_timeout_s = members_timeout_s  # who else is in a group left: the wait
        self.topics = Topics.of(config.topic_prefix, device.name, device.all_groups)
        self._device = device.name
        self._on_message = on_message
        self._client: aiomqtt.Client | None = None
        self._state: bytes | None = None
        self.connected = asyncio.Event()
        self.problem: str | None = None  # why the broker cannot be reached now, if it cannot
        self.on_connection: Callable[[], None] = lambda: None  # connected, or no longer
        self.lanes = Lanes(self.topics)  # the session's delivered messages (a new one each)
        self._was_up = False
        self._outbox: deque[tuple[str, bytes, bool]] = deque(maxlen=_OUTBOX_MAX)
        # A group's claims and audio, apart: however much audio waits, no event is dropped.
        self._speech: deque[tuple[str, bytes]] = deque()
        self._speech_bytes = 0
        self._outbox_ready = asyncio.Event()
        # Published, retained, on every connect (Home Assistant discovery).
        self.retained_on_connect: list[tuple[str, bytes]] = []
        # What a group holds on the broker because it has members (its Home Assistant
        # entity): cleared by the member that leaves it last.
        self.retained_of_group: Callable[[str], list[str]] = lambda group: []

    def _new_lanes(self) -> Lanes:
        self.lanes = Lanes(self.topics)
        return self.lanes

    @property
    def broker(self) -> str:
        """Where the broker is, as a user wrote it: `host:port`."""
        return f"{self._config.host}:{self._config.port}"

    async def run(self) -> None:
        """Connect, serve, and reconnect with exponential backoff until cancelled."""
        backoff = Backoff(start=0.5, cap=30.0)
        while True:
            self._was_up = False
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.problem = describe_error(exc)
                log.warning("MQTT broker %s: %s", self.broker, self.problem)
            self._client = None
            if self.connected.is_set():
                self.connected.clear()
                self.on_connection()
            self._speech.clear()  # a group's audio is of no use after the moment
            self._speech_bytes = 0
            if self._was_up:
                backoff.reset()
            delay = backoff.next()
            log.info("MQTT reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        will = aiomqtt.Will(self.topics.availability, b"offline", qos=1, retain=True)
        client = make_client(
            self._config, identifier=f"edge-tts-{self._device}", will=will, persistent=True
        )
        # A QoS 1 announcement is acknowledged only once it is safe with us (journaled): until
        # then the broker keeps it and delivers it again if this process dies.
        client._client.manual_ack_set(True)
        async with client:
            self._client = client
            self._was_up = True
            try:
                await self._serve(client)
            except asyncio.CancelledError:
                # A clean shutdown says so itself (a clean disconnect sends no last will), from
                # anywhere in the session: Home Assistant may have seen `online` already.
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2):
                        await client.publish(
                            self.topics.availability, b"offline", qos=1, retain=True
                        )
                raise

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Subscribe, announce, say online; then receive until the session ends."""
        # Our groups' entities too: one cleared while we are in the group is put back.
        watched = self._group_entities()
        wanted = self.topics.subscriptions() + [(topic, 1) for topic in watched]
        prefix = self._config.topic_prefix
        prefixes = (prefix, self._config.discovery_prefix or prefix)
        noted = [t for t in _read_topics(self._subscribed) if _our_filter(t, prefixes)]
        stale = sorted(set(noted) - {t for t, _ in wanted})
        if stale:
            await client.unsubscribe(stale)
            log.info("MQTT: no longer listening on %s", ", ".join(stale))
        await client.subscribe(wanted)
        now = [t for t, _ in wanted]
        # Groups left whose entity may be ours to clear: noted once that is done, so that
        # what cannot be done now is tried again at the next connect or start.
        left = [g for g in _groups_of(stale, prefix) if self.retained_of_group(g)]
        if not left:
            _write_topics(self._subscribed, now)
        for topic, payload in self.retained_on_connect:
            await client.publish(topic, payload, qos=1, retain=True)
        # What waited for the broker (the state, the stats, events) goes out before `online`,
        # so Home Assistant never sees the device online with an old state.
        await self._flush(client)
        # Online last, once subscribed and announced: what is published after it is heard.
        await client.publish(self.topics.availability, b"online", qos=1, retain=True)
        log.info("MQTT connected to %s, listening on %s", self.broker, self.topics.say)
        self.problem = None
        self.connected.set()
        self.on_connection()
        tasks = [
            asyncio.create_task(self._send_outbox(client), name="mqtt sender"),
            asyncio.create_task(self._hear_the_groups(), name="mqtt groups"),
        ]
        if left:
            leave = self._leave(client, left, now)
            tasks.append(asyncio.create_task(leave, name="mqtt groups left"))
        try:
            await self._receive(client)
        finally:
            for task in tasks:
                await _cancel(task)

    async def _hear_the_groups(self) -> None:
        """What the members of the groups tell each other (`Topics.shared`), on a connection
        of its own, for as long as the session lasts: a flood there (anyone who may publish
        on the group topics can make one) waits in the broker's queue for that connection,
        never ahead of an announcement or a stop on the session's. Its messages wait here in
        bounded lanes (`Lanes`), the oldest let go."""
        backoff = Backoff(start=0.5, cap=30.0)
        while True:
            client = make_client(
                self._config,
                identifier=f"edge-tts-{self._device}-groups",
                queue_type=inbox(self._new_lanes),
            )
            try:
                async with client:
                    await client.subscribe(self.topics.shared())
                    backoff.reset()
                    await self._receive(client)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT: the groups' connection: %s", describe_error(exc))
            await asyncio.sleep(backoff.next())

    async def _leave(self, client: aiomqtt.Client, left: list[str], now: list[str]) -> None:
        """Clear what the groups this device left hold on the broker (their Home Assistant
        entity) for each that no other device is in, then note the subscriptions. Who is in
        which is asked on a connection of its own, which takes nothing meant for us."""
        prefix = self._config.topic_prefix
        try:
            ask = make_client(self._config, identifier=f"edge-tts-{self._device}-members")
            async with ask:
                others = await memberships(ask, prefix, self._device, self._members_timeout_s)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            why = describe_error(exc) if isinstance(exc, aiomqtt.MqttError) else "no answer"
            log.warning(
                "MQTT: cannot find out who else is in %s (%s): its entity stays for now",
                ", ".join(left),
                why,
            )
            return
        gone = orphans(left, others)
        for group in left:
            if group in gone:
                for topic in self.retained_of_group(group):
                    await client.publish(topic, b"", qos=1, retain=True)
                log.info("MQTT: left group %s, which no other device is in: entity removed", group)
            else:
                members = sorted(d for d, of in others.items() if of is None or group in of)
                log.info("MQTT: left group %s; its entity stays for %s", group, ", ".join(members))
        _write_topics(self._subscribed, now)

    def _group_entities(self) -> dict[str, tuple[str, bytes]]:
        """What our groups hold on the broker while they have members (their entities): by
        topic, the group and the payload published on every connect."""
        published = dict(self.retained_on_connect)
        return {
            topic: (group, published[topic])
            for group in self.topics.groups
            for topic in self.retained_of_group(group)
            if topic in published
        }

    async def _receive(self, client: aiomqtt.Client) -> None:
        entities = self._group_entities()
        async for message in client.messages:
            topic = str(message.topic)
            route = self.topics.route(topic)
            if topic in entities:
                # Cleared while we are in the group (by a member that left it and did not see
                # us join, or by hand): a group with a member has its entity. One copy waits at
                # most: a flood of clears must not crowd our events out of the outbox.
                group, entity = entities[topic]
                if not message.payload and (topic, entity, True) not in self._outbox:
                    log.info("MQTT: group %s's entity was cleared: published again", group)
                    self._post(topic, entity, retain=True)
            elif message.retain and (route is None or route.kind != Kind.AVAILABILITY):
                # A retained `say` would be spoken again on every connect.
                if route is not None and route.kind != Kind.SPEECH:  # (a flood: not logged)
                    log.warning(
                        "ignoring a retained message on %s (publish announcements without retain)",
                        message.topic,
                    )
            else:
                await self._on_message(Incoming(topic, _bytes(message.payload), message.mid, route))
            if message.qos:
                client._client.ack(message.mid, message.qos)

    async def _send_outbox(self, client: aiomqtt.Client) -> None:
        """Publish queued events and state in order; what a lost connection interrupts stays
        queued and goes out after the reconnect."""
        while True:
            await self._outbox_ready.wait()
            await self._flush(client)
            self._outbox_ready.clear()

    async def _flush(self, client: aiomqtt.Client) -> None:
        while self._outbox or self._speech:
            while self._outbox:
                topic, payload, retain = self._outbox[0]
                await client.publish(topic, payload, qos=1, retain=retain)
                self._outbox.popleft()
            if self._speech:
                topic, payload = self._speech.popleft()
                self._speech_bytes -= len(payload)
                await client.publish(topic, payload, qos=0)

    def publish_event(self, event: dict[str, object]) -> None:
        self._post(self.topics.event, json.dumps(event).encode(), retain=False)

    def publish_state(self, state: dict[str, object]) -> None:
        self._state = json.dumps(state).encode()
        self._post(self.topics.state, self._state, retain=True)

    def publish_stats(self, stats: dict[str, object]) -> None:
        self._post(self.topics.stats, json.dumps(stats).encode(), retain=True)

    def publish_speech(self, topic: str, payload: bytes) -> None:
        """A group announcement's claim or audio, to the other members: at QoS 0, in order
        with everything else we publish (nothing waits for it while we are away: the members
        notice the gap and speak for themselves)."""
        if not self.connected.is_set():  # audio kept for a later connection would be of no use
            return
        if self._speech_bytes + len(payload) > _SPEECH_MAX_BYTES:
            log.warning("MQTT: the broker takes a group's audio too slowly; a piece is dropped")
            return  # the members see the gap and say the rest themselves
        self._speech.append((topic, payload))
        self._speech_bytes += len(payload)
        self._outbox_ready.set()

    def _post(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            log.warning("MQTT outbox full; dropping the oldest message")
        self._outbox.append((topic, payload, retain))
        self._outbox_ready.set()
