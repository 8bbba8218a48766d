"""Wiring for `edge-tts serve`: MQTT → queue → speaker → player, events back to MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timezone

from .announcement import Announcement, parse_payload
from .cache import open_cache
from .config import Config, Secret
from .engines import Engine
from .engines.cosyvoice import CosyVoiceEngine
from .errors import BadAnnouncement
from .keeper import ConnectionKeeper, KeeperStats
from .mqtt import MqttLink
from .player import AudioSink, Player
from .speaker import Event, Speaker

log = logging.getLogger(__name__)


def build_engines(
    config: Config, api_key: Secret | None, on_change: Callable[[KeeperStats], None] | None = None
) -> tuple[dict[str, Engine], ConnectionKeeper]:
    """The engines the configured voices need, sharing one keeper for the inference endpoint."""
    ds = config.dashscope
    keeper = ConnectionKeeper(
        ds.inference_url,
        api_key,
        keep_warm=ds.keep_warm,
        idle_timeout_s=ds.idle_timeout_s,
        connect_timeout_s=ds.connect_timeout_s,
        on_change=on_change,
    )
    engines: dict[str, Engine] = {
        "cosyvoice": CosyVoiceEngine(
            keeper,
            first_audio_timeout_s=ds.first_audio_timeout_s,
            stall_timeout_s=ds.stall_timeout_s,
        )
    }
    return engines, keeper


class Daemon:
    """The long-running service: one MQTT session, one queue, one speaker."""

    def __init__(self, config: Config, api_key: Secret | None, sink: AudioSink | None = None) -> None:
        self.config = config
        engines, self.keeper = build_engines(config, api_key, self._stats_changed)
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._stats_pending = False
        self.player = sink or Player(config.audio)
        self.link = MqttLink(config.mqtt, config.device.name, self._on_message)
        self.cache = open_cache(config.cache)
        self.speaker = Speaker(config, engines, self.player, self._emit, self.cache)
        self.queue: asyncio.Queue[Announcement] = asyncio.Queue()
        if api_key is None:
            log.warning(
                "no DashScope API key: cloud voices cannot speak. Put the key in a file named by "
                "dashscope.api_key_file, or set DASHSCOPE_API_KEY"
            )

    async def run(self) -> None:
        """Serve until cancelled; then say offline and close every connection."""
        try:
            if isinstance(self.player, Player):
                await self.player.prepare()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.link.run())
                tasks.create_task(self.keeper.run())
                tasks.create_task(self._speak_queue())
        finally:
            with contextlib.suppress(Exception):
                await self.keeper.close()
            if isinstance(self.player, Player):
                await self.player.close()

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.link.topics.stop:
            self._stop()
            return
        try:
            announcement = parse_payload(
                payload,
                voices=self.config.voices.keys(),
                max_chars=self.config.announcements.max_chars,
            )
        except BadAnnouncement as exc:
            log.warning("announcement %s on %s refused: %s", exc.id, topic, exc.reason)
            self._emit(Event(exc.id or "", "failed", error=exc.reason), None)
            return
        log.info("announcement %s queued: %r", announcement.id, announcement.text[:80])
        self._emit(Event(announcement.id, "queued"), announcement)
        self.queue.put_nowait(announcement)

    def _stop(self) -> None:
        dropped = 0
        while not self.queue.empty():
            a = self.queue.get_nowait()
            self._emit(Event(a.id, "dropped", error="stopped"), a)
            dropped += 1
        log.info("stop: cutting speech, %d queued announcements dropped", dropped)
        self.speaker.stop()

    async def _speak_queue(self) -> None:
        while True:
            a = await self.queue.get()
            self.link.publish_state({"state": "speaking", "id": a.id, "text": a.text})
            await self.speaker.speak(a)
            if self.queue.empty():
                self.link.publish_state({"state": "idle", "id": None, "text": None})

    def _stats_changed(self, _: KeeperStats) -> None:
        # Several changes in one step of the loop go out as one message.
        if not self._stats_pending:
            self._stats_pending = True
            asyncio.get_running_loop().call_soon(self._publish_stats)

    def _publish_stats(self) -> None:
        self._stats_pending = False
        self.link.publish_stats({"since": self._started_at, "cloud": self.keeper.stats.as_dict()})

    def _emit(self, event: Event, announcement: Announcement | None) -> None:
        self.link.publish_event(event.as_dict())
