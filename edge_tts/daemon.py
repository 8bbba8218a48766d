"""Wiring for `edge-tts serve`: MQTT → queue → speaker → player, events back to MQTT; owns
start-up (readiness), reload and shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from . import memory
from .announcement import Announcement, excerpt, parse_payload, restore
from .cache import PhraseCache, open_cache
from .config import Config, EngineName
from .costs import Usage
from .discovery import announce
from .engines.cloud import Cloud, build_engines, uses_inference
from .errors import BadAnnouncement, SynthesisError
from .events import FINAL, Event, EventKind
from .group import Groups
from .journal import Journal, Refused, Restored, digest
from .keeper import ConnectionKeeper
from .mqtt import Incoming, Kind, MqttLink
from .paths import state_dir
from .player import AudioSink, Discard, Player
from .policy import interrupts, play_moment, playback_volume, too_late, too_old
from .queue import RANK, AnnouncementQueue
from .secret import Secret
from .speaker import Speaker
from .status import Reporter, Snapshot
from .systemd import Notifier
from .wyoming_server import WyomingServer, WyomingStats

log = logging.getLogger(__name__)

_SHUTDOWN_S = 1.5  # what closing connections may take after a SIGTERM, in all
_COUNT_EVERY_S = 60.0  # the phrase cache's counters reach the disk at most this often
# An announcement to be heard later than this waits outside the queue (not holding it up)
# until this long before its play_at: time to get its audio ready.
_HOLD_S = 10.0


class Daemon:
    """The long-running service: one MQTT session, one queue, one speaker. A reload swaps the
    parts the new config changes and keeps the queue."""

    def __init__(
        self,
        config: Config,
        api_key: Secret | None,
        sink: AudioSink | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._api_key = api_key
        self._own_player = sink is None
        self.player: AudioSink = sink or Player(config.audio)
        self.notifier = notifier or Notifier({})
        self.queue = AnnouncementQueue(
            config.announcements.queue_size, config.announcements.dedupe_s
        )
        self.journal = Journal.for_device(config.device.name)
        self.usage = Usage.for_device(config.device.name, config.dashscope.monthly_characters)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._speaking: Announcement | None = None
        # Waiting for their play_at, each with its timer (the same message twice is two: the
        # queue judges duplicates when they are released, by when each is due).
        self._held: list[tuple[Announcement, asyncio.TimerHandle]] = []
        self.link = self._link()
        self.groups = self._groups()
        self.report = Reporter(self.link, self.notifier, self._snapshot)
        self.cloud = self._build_cloud(config, api_key)
        self.cache: PhraseCache | None = open_cache(config.cache)
        self.speaker = self._speaker()
        self.wyoming = WyomingStats()
        self._wyoming_cloud: Cloud | None = None
        _warn_without_key(api_key)

    def _link(self) -> MqttLink:
        name = self.config.device.name
        link = MqttLink(
            self.config.mqtt,
            self.config.device,
            self._on_message,
            subscribed=state_dir() / f"subscriptions-{name}.json",
        )
        announce(link, self.config)
        link.on_connection = lambda: self.report.connection_changed()
        return link

    def _groups(self) -> Groups:
        device = self.config.device
        key = device.group_key.reveal().encode() if device.group_key else None
        return Groups(device.name, self.link.topics, self.link.publish_speech, key)

    @property
    def keeper(self) -> ConnectionKeeper:
        return self.cloud.keeper

    def _build_cloud(self, config: Config, api_key: Secret | None) -> Cloud:
        # What is sent is counted; the stats published at the end of each announcement or
        # request say so (not one publish per sentence).
        return build_engines(config, api_key, self.report.stats_changed, meter=self.usage.add)

    def _speaker(self) -> Speaker:
        return Speaker(
            self.config,
            self.cloud.engines,
            self.player,
            self._emit,
            self.cache,
            budget=self.usage.exhausted,
            groups=self.groups,
        )

    def _warm_default_voice(self) -> None:
        voice = self.config.voices[self.config.default_voice]
        if voice.engine == EngineName.QWEN and self.config.dashscope.keep_warm and self._api_key:
            self.cloud.qwen.keeper_for_voice(voice, self.config.audio.sample_rate)

    # --- life ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; then say offline and close every connection."""
        try:
            await self.player.prepare()
            await self._preload_fallback()
            self._resume(*await asyncio.to_thread(self.journal.open, self._restore, self._most))
            # Home Assistant shows the truth from the first second: idle (unless something was
            # resumed), and stats of this run (no last announcement yet), not the last run's.
            if self._speaking is None:
                self.report.idle()
            self.report.publish_stats()
            self._start("link", self.link.run())
            self._start("cloud", self.cloud.run())
            self._warm_default_voice()
            self._start("speak", self._speak_queue())
            if self.config.wyoming.enabled:
                self._start("wyoming", self._serve_wyoming())
            self._start("watchdog", self.notifier.keep_alive())
            self._start("counters", self._write_counts())
            # Ready without the broker: a service that waits for one that is down (or not set
            # up yet: mqtt.host is set after installing) would never start. The status says
            # what it waits for, and announcements come once the broker does.
            if self.cache is not None:
                await asyncio.to_thread(self.cache.stats)  # the one full scan, at start
            self.notifier.ready(self.report.status())
            log.info("ready: %s", self.report.status())
            # A part that dies unexpectedly takes the daemon down, so systemd restarts it.
            while True:
                done, _ = await asyncio.wait(
                    set(self._tasks.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                    self._tasks = {k: t for k, t in self._tasks.items() if t is not task}
                if not self._tasks:
                    return
        finally:
            self.notifier.stopping()
            await self._shut_down()

    async def _preload_fallback(self) -> None:
        voice = self.config.fallback_profile
        if self.config.fallback.preload and voice is not None and voice.engine == EngineName.PIPER:
            try:
                await self.cloud.piper.preload(Path(voice.model) if voice.model else None)
            except SynthesisError as exc:
                log.error("fallback voice %s cannot be loaded: %s", voice.name, exc.reason)

    async def _write_counts(self) -> None:
        """The phrase cache's hits and misses and the cloud's characters, written once a
        minute when there are new ones (a power cut loses at most a minute of them)."""
        while True:
            await asyncio.sleep(_COUNT_EVERY_S)
            if self.cache is not None:
                await asyncio.to_thread(self.cache.flush_counts)
            await asyncio.to_thread(self.usage.flush)

    async def _serve_wyoming(self) -> None:
        """Home Assistant's own voice: the Wyoming server, with cloud connections of its own
        (an announcement keeps the warm one), until cancelled."""
        config = self.config
        cloud = self._build_cloud(config, self._api_key)
        self._wyoming_cloud = cloud
        speaker = Speaker(
            config,
            cloud.engines,
            Discard(),
            lambda _e, _a: None,
            self.cache,
            budget=self.usage.exhausted,
        )
        self.wyoming = WyomingStats()
        server = WyomingServer(config, speaker, self.wyoming, self.report.stats_changed)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(cloud.run(), name="wyoming cloud")
                group.create_task(server.run(), name="wyoming server")
        finally:
            await cloud.close()

    def _start(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.ensure_future(coro)

    async def _restart(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        await self._stop_task(name)
        self._start(name, coro)

    async def _stop_task(self, name: str) -> None:
        old = self._tasks.pop(name, None)
        if old is not None:
            old.cancel()
            await asyncio.gather(old, return_exceptions=True)

    async def _shut_down(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        try:
            async with asyncio.timeout(_SHUTDOWN_S):
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.cloud.close()
        except TimeoutError:
            pending = [name for name, task in self._tasks.items() if not task.done()]
            log.warning(
                "shutdown: gave up waiting after %.1f s (still running: %s)",
                _SHUTDOWN_S,
                ", ".join(pending) or "closing the cloud connections",
            )
        if self._own_player:
            await self.player.close()
        if self.cache is not None:
            self.cache.flush_counts()  # nothing counted is lost on a clean stop
        self.usage.flush()
        self.journal.close()
        self.notifier.close()

    async def reload(self, config: Config, api_key: Secret | None) -> None:
        """Apply a new, already validated config; the queue and the announcement being spoken
        are kept."""
        old, self.config = self.config, config
        self.report.note = ""
        self.notifier.reloading()
        if config.mqtt != old.mqtt or config.device != old.device:
            log.info("reload: reconnecting to the broker")
            self.link = self.report.link = self._link()
            self.groups = self._groups()
            await self._restart("link", self.link.run())
        api_key_changed = api_key != self._api_key
        if (
            config.dashscope != old.dashscope
            or api_key_changed
            or uses_inference(config) != uses_inference(old)
        ):
            log.info("reload: new cloud connection settings")
            old_cloud = self.cloud
            self._api_key = api_key
            self.cloud = self._build_cloud(config, api_key)
            await self._restart("cloud", self.cloud.run())
            await old_cloud.close()
            _warn_without_key(api_key)
        self._warm_default_voice()  # it may be a new voice, or a new output rate
        if config.audio != old.audio and self._own_player:
            log.info("reload: new audio settings")
            old_player, self.player = self.player, Player(config.audio)
            await self.player.prepare()
            await old_player.close()
        self.usage.cap = config.dashscope.monthly_characters or None
        self.queue.max_size = config.announcements.queue_size
        self.queue.dedupe_s = config.announcements.dedupe_s
        if config.cache != old.cache:
            if self.cache is not None:
                self.cache.flush_counts()
            self.cache = open_cache(config.cache)
        self.speaker = self._speaker()
        if _wyoming_changed(config, old) or api_key_changed:
            log.info("reload: the Wyoming server starts again")
            self.wyoming = WyomingStats()
            if config.wyoming.enabled:
                await self._restart("wyoming", self._serve_wyoming())
            else:
                await self._stop_task("wyoming")
        if self.cache is not None and self.cache.footprint is None:
            await asyncio.to_thread(self.cache.stats)
        self.notifier.ready(self.report.status())
        log.info("configuration reloaded from %s", config.source or "built-in defaults")

    def refuse_reload(self, reason: str) -> None:
        self.report.note = f"reload refused: {reason}"
        self.notifier.ready(self.report.status())

    # --- announcements ---------------------------------------------------------------------

    async def _on_message(self, message: Incoming) -> None:
        """Take one message; when this returns the message may be acknowledged: it is
        journaled (or refused with an event). Nothing a message holds ends the daemon."""
        try:
            await self._take(message)
        except Exception as exc:  # the last line of defence: one message, one failure
            log.exception("message on %s could not be handled", message.topic)
            self._emit(
                Event("", EventKind.FAILED, error=f"internal error: {excerpt(str(exc), 80)}"), None
            )

    async def _take(self, message: Incoming) -> None:
        route = message.route
        if route is None:
            return
        if route.kind == Kind.STOP:
            self._stop(route.group)
            return
        if route.kind == Kind.SPEECH:
            assert route.group is not None and route.key is not None
            self.groups.receive(route.group, route.key, message.payload)
            return
        if route.kind == Kind.AVAILABILITY:
            assert route.member is not None
            self.groups.availability(route.member, message.payload == b"online")
            return
        payload_digest = digest(message.payload)
        if message.mid and self.journal.redelivered(message.mid, payload_digest):
            log.info(
                "message %d on %s is the broker's redelivery of one already queued",
                message.mid,
                message.topic,
            )
            return
        try:
            a = parse_payload(
                message.payload,
                # Every member of a group gives the announcement the same id (its events
                # agree, and so does its speech topic), unless the message names one.
                msg_id=None if route.group is None else payload_digest[:12],
                voices=self.config.voices.keys(),
                max_chars=self.config.announcements.max_chars,
                chimes=dict(self.config.audio.chimes).keys(),
                speak_title=self.config.announcements.speak_title,
            )
        except BadAnnouncement as exc:
            log.warning("announcement %s on %s refused: %s", exc.id, message.topic, exc.reason)
            self._emit(Event(exc.id or "", EventKind.FAILED, error=exc.reason), None)
            return
        if route.group is not None:
            a = replace(a, group=route.group)
        play_at, clocks = play_moment(a.play_at, a.sent_at, time.time())
        if clocks is not None:
            log.warning("announcement %s: %s", a.id, clocks)
            a = replace(a, play_at=play_at)
        if self._too_old(a, a.sent_at):
            return
        a = self.journal.add(a, mid=message.mid, payload_digest=payload_digest)
        self._enqueue(a)
        await self.journal.flush()

    def _restore(self, fields: object) -> Announcement:
        """An entry of the durable queue, held to the rules of a `say` payload now."""
        return restore(
            fields,
            voices=self.config.voices.keys(),
            max_chars=self.config.announcements.max_chars,
            chimes=dict(self.config.audio.chimes).keys(),
        )

    @property
    def _most(self) -> int:
        """The most a run can leave unfinished: a full queue, as many held, one playing."""
        return 2 * self.config.announcements.queue_size + 1

    def _resume(self, restored: list[Restored], refused: list[Refused]) -> None:
        """Queue again what the last run left unfinished (its events said `queued`); what
        the journal held that cannot be spoken fails, saying why."""
        for bad in refused:
            error = f"not resumed from the queue journal: {bad.reason}"
            self._emit(Event(bad.id, EventKind.FAILED, error=error), None)
        for r in restored:
            a = r.announcement
            if not self._too_old(a, a.sent_at if a.sent_at is not None else r.received):
                log.info("announcement %s: resumed from the queue journal", a.id)
                self._enqueue(a)

    def _too_old(self, a: Announcement, since: float | None) -> bool:
        """Drop `a`, with an event, if it was sent (or was to be heard) longer than max_age_s
        ago."""
        now, max_age_s = time.time(), self.config.announcements.max_age_s
        reason = too_late(a.play_at, now, max_age_s) or too_old(since, now, max_age_s)
        if reason is None:
            return False
        log.info("announcement %s dropped: %s", a.id, reason)
        self._emit(Event(a.id, EventKind.DROPPED, error=reason), a)
        return True

    def _enqueue(self, a: Announcement) -> None:
        wait = 0.0 if a.play_at is None else a.play_at - _HOLD_S - time.time()
        if wait <= 0:
            self._put(a)
            return
        # As many wait as the queue holds: past that the least urgent goes, and of those the
        # one to be heard last (a flood of far-off messages must not grow without bound).
        limit = self.queue.max_size
        if len(self._held) >= limit:
            held = [h for h, _ in self._held]
            worst = max([*held, a], key=lambda h: (RANK[h.priority], h.play_at or 0.0))
            reason = f"too many waiting for their play_at ({limit})"
            log.info("announcement %s dropped: %s", worst.id, reason)
            self._emit(Event(worst.id, EventKind.DROPPED, error=reason), worst)
            if worst is a:
                return
            self._unhold(worst).cancel()
        log.info("announcement %s held until %.0f s before its play_at", a.id, _HOLD_S)
        self._emit(Event(a.id, EventKind.QUEUED), a)
        loop = asyncio.get_running_loop()
        self._held.append((a, loop.call_later(wait, self._release, a)))

    def _unhold(self, a: Announcement) -> asyncio.TimerHandle:
        """Take `a` (this very one) from those held; its timer."""
        i = next(i for i, (h, _) in enumerate(self._held) if h is a)
        return self._held.pop(i)[1]

    def _release(self, a: Announcement) -> None:
        self._unhold(a)
        self._put(a, told=True)

    def _put(self, a: Announcement, *, told: bool = False) -> None:
        """Into the queue; `told`: its `queued` event was published when it was held."""
        refused = self.queue.put(a)
        for r in refused:
            log.info("announcement %s dropped: %s", r.announcement.id, r.reason)
            self._emit(Event(r.announcement.id, EventKind.DROPPED, error=r.reason), r.announcement)
        if any(r.announcement is a for r in refused):
            return
        log.info("announcement %s queued (%s): %r", a.id, a.priority, a.text[:80])
        if not told:
            self._emit(Event(a.id, EventKind.QUEUED), a)
        playing = self._speaking
        if interrupts(a, playing):
            assert playing is not None
            log.info("announcement %s interrupts %s", a.id, playing.id)
            self.speaker.stop(f"interrupted by {a.id}")

    def _stop(self, group: str | None = None) -> None:
        """Cut what is playing and drop what waits (a stop to a group: on every member)."""
        dropped = self.queue.clear()
        for a, timer in self._held:
            timer.cancel()
            dropped.append(a)
        self._held.clear()
        for a in dropped:
            self._emit(Event(a.id, EventKind.DROPPED, error="stopped"), a)
        log.info(
            "stop%s: cutting speech, %d queued announcements dropped",
            f" to group {group}" if group else "",
            len(dropped),
        )
        self.speaker.stop()

    async def _speak_queue(self) -> None:
        while True:
            a = await self.queue.get()
            try:
                await self._speak_one(a)
            except Exception as exc:  # the last line of defence: one announcement fails
                log.exception("announcement %s could not be spoken", a.id)
                self._speaking = None
                self.queue.done()
                self._emit(
                    Event(a.id, EventKind.FAILED, error=f"internal error: {excerpt(str(exc), 80)}"),
                    a,
                )
                self.report.idle()

    async def _speak_one(self, a: Announcement) -> None:
        """Speak one announcement at the volume its priority and the hour give it."""
        volume = playback_volume(self.config, a, datetime.now())
        if volume is None:
            log.info("announcement %s dropped: quiet hours", a.id)
            self._emit(Event(a.id, EventKind.DROPPED, error="quiet hours"), a)
            self.queue.done()
            return
        a = replace(a, volume=volume)
        self._speaking = a
        self.report.speaking(a.id, a.text)
        try:
            await self.speaker.speak(a)
        finally:
            self._speaking = None
            self.queue.done()
            self.groups.forget(a)
        self.usage.spoke()
        if not len(self.queue):
            self.report.idle()
            memory.collected()
        self.report.stats_changed()  # the cache and the queue changed

    # --- what the daemon tells about itself ------------------------------------------------

    def _snapshot(self) -> Snapshot:
        return Snapshot(
            speaking=self._speaking.id if self._speaking is not None else None,
            connected=self.link.connected.is_set(),
            broker=self.link.broker,
            broker_problem=self.link.problem,
            cloud_warm=self.cloud.warm,
            cloud_error=self.cloud.last_error,
            cloud_stats=self.cloud.stats(),
            cache=self.cache,
            queue_length=len(self.queue) + len(self._held),
            journal=self.journal,
            wyoming=self._wyoming_stats(),
            usage=self.usage.as_dict(),
            groups=self.groups.as_dict() | {"dropped_messages": self.link.lanes.dropped},
            spoken_today=self.usage.spoken_today,
        )

    def _wyoming_stats(self) -> dict[str, object] | None:
        """The Wyoming server's figures, and its own cloud connections' (every task and
        connection a client started is over when `speaking` is 0 and `cloud.warm` holds)."""
        if not self.config.wyoming.enabled:
            return None
        cloud = self._wyoming_cloud
        return self.wyoming.as_dict() | ({"cloud": cloud.stats()} if cloud else {})

    def _emit(self, event: Event, announcement: Announcement | None) -> None:
        self.report.event(event)
        if event.event in FINAL and announcement is not None:
            self.journal.end(announcement)


def _wyoming_changed(config: Config, old: Config) -> bool:
    """Whether the Wyoming server must start again: what it serves or how changed."""
    return (
        config.wyoming != old.wyoming
        or config.voices != old.voices
        or config.default_voice != old.default_voice
        or config.fallback_voice != old.fallback_voice
        or config.dashscope != old.dashscope
        or config.audio.sample_rate != old.audio.sample_rate
        or config.cache != old.cache
        or config.announcements.max_chars != old.announcements.max_chars
    )


def _warn_without_key(api_key: Secret | None) -> None:
    if api_key is None:
        log.warning(
            "no DashScope API key: cloud voices cannot speak. Put the key in a file named by "
            "dashscope.api_key_file, or set DASHSCOPE_API_KEY"
        )
