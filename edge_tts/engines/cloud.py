"""The cloud side of the daemon: every engine the voices need, and the connections kept for
them, with one owner for every keeper loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..config import CLOUD_INFERENCE, Config, EngineName
from ..keeper import ConnectionKeeper, ConnectionSettings, KeeperStats
from ..secret import Secret
from . import AudioWaitSettings, Engine, Meter
from .cosyvoice import CosyVoiceEngine
from .piper import PiperEngine
from .qwen import QwenEngine
from .sambert import SambertEngine


class Cloud:
    """The engines the voices need, and the connections kept for them. `run()` is the one
    owner of every endpoint's keeper loop: each a named task in one TaskGroup, cancelled and
    awaited when it ends; a keeper loop that fails ends it (and so the daemon)."""

    def __init__(self, keeper: ConnectionKeeper, *, keep_inference: bool) -> None:
        self.keeper = keeper  # the inference endpoint: CosyVoice and Sambert
        self.engines: dict[str, Engine] = {}
        self.qwen: QwenEngine  # the realtime endpoint: its own ready sessions
        self.piper: PiperEngine  # the offline voice
        self._keep_inference = keep_inference
        self._group: asyncio.TaskGroup | None = None
        self._waiting: list[tuple[ConnectionKeeper, str]] = []  # asked for before run()

    def run_keeper(self, keeper: ConnectionKeeper, name: str) -> None:
        """Keep `keeper`'s connections from now on (its loop ends when the keeper closes)."""
        if self._group is None:
            self._waiting.append((keeper, name))
        else:
            self._group.create_task(keeper.run(), name=name)

    async def run(self) -> None:
        """Run the keeper loops until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if self._keep_inference:
                    group.create_task(self.keeper.run(), name="keeper inference")
                waiting, self._waiting = self._waiting, []
                for keeper, name in waiting:
                    group.create_task(keeper.run(), name=name)
                await asyncio.Future()  # the loops run until this is cancelled
            finally:
                self._group = None

    @property
    def warm(self) -> bool:
        return self.keeper.stats.warm or self.qwen.warm_now

    @property
    def last_error(self) -> str | None:
        errors = [self.keeper.stats.last_error] + [s["last_error"] for s in self.qwen.stats()]
        return next((str(e) for e in errors if e), None)

    def stats(self) -> dict[str, object]:
        """The inference connection's figures; `warm` for any endpoint; each kept Qwen
        profile's own figures under `qwen_sessions`."""
        return {
            **self.keeper.stats.as_dict(),
            "warm": self.warm,
            "qwen_sessions": self.qwen.stats(),
        }

    async def close(self) -> None:
        await asyncio.gather(self.keeper.close(), self.qwen.close(), self.piper.close())


def build_engines(
    config: Config,
    api_key: Secret | None,
    on_change: Callable[[KeeperStats], None] | None = None,
    *,
    serving: bool = True,
    meter: Meter | None = None,
) -> Cloud:
    """Every engine, the inference ones sharing one kept connection. Connections are kept
    warm only when `serving` (not for a one-off `say`) and only for endpoints a voice uses;
    `Cloud.run()` keeps them."""
    ds = config.dashscope
    connection = ConnectionSettings.of(ds, keep_warm=ds.keep_warm and serving)
    wait = AudioWaitSettings.of(ds)
    keeper = ConnectionKeeper(ds.inference_url, api_key, connection, on_change=on_change)
    cloud = Cloud(keeper, keep_inference=connection.keep_warm and uses_inference(config))
    cloud.qwen = QwenEngine(
        ds.realtime_url,
        api_key,
        connection,
        wait,
        on_change=on_change,
        run_keeper=cloud.run_keeper,
        meter=meter,
    )
    cloud.piper = PiperEngine(release_after_s=config.fallback.release_after_s)
    cloud.engines = {
        EngineName.COSYVOICE: CosyVoiceEngine(keeper, wait, meter),
        EngineName.SAMBERT: SambertEngine(keeper, wait, meter),
        EngineName.QWEN: cloud.qwen,
        EngineName.PIPER: cloud.piper,
    }
    return cloud


def uses_inference(config: Config) -> bool:
    """Whether a voice speaks through the kept inference connection."""
    return any(v.engine in CLOUD_INFERENCE for v in config.voices.values())
