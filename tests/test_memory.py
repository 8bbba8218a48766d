"""What an announcement leaves in reference cycles is collected once it is over, instead of
piling up until CPython's oldest generation has grown by a quarter (edge_tts.memory; what it
saves is measured by bench/soak.py)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from conftest import (
    Broker,
    Capture,
    DaemonProcess,
    Home,
    configured_daemon,
    free_port,
    fresh_python,
)
from fake_dashscope import FakeDashScope

# An announcement's objects: alive across many allocations (so the collector has moved them
# to its oldest generation), then over, in reference cycles.
ANNOUNCEMENT = """
    import collections, gc
    import edge_tts.__main__  # all that the service loads
    from edge_tts import memory

    class Held:
        def __init__(self):
            self.me = self

    def announcement():
        held = collections.deque(Held() for _ in range(20_000))
        held.clear()

    def alive():
        return sum(type(o) is Held for o in gc.get_objects())
"""


def test_garbage_in_cycles_is_collected_once_start_up_is_frozen() -> None:
    out = fresh_python(
        ANNOUNCEMENT
        + """
    announcement()
    print(memory.collected(), alive() > 0)  # nothing frozen: left to CPython, still there
    gc.collect()
    memory.keep_for_good()
    frozen = gc.get_freeze_count()
    announcement()
    print(memory.collected() > 0, alive(), gc.get_freeze_count() == frozen > 0)
    """
    )
    assert out.splitlines() == ["0 True", "True 0 True"]


RECORD = """
import gc, os, sys

_out = open(os.environ["GC_RECORD"], "a", buffering=1)


def _record(phase, info):
    if phase == "stop" and info["generation"] == 2:  # a full collection: who asked for it
        caller = sys._getframe(1).f_code.co_name
        _out.write(f"{caller} {gc.get_freeze_count() > 0}\\n")


gc.callbacks.append(_record)
"""


def recorded(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Where the service's process notes its full collections, and the environment that
    makes it (its sitecustomize: an observer, nothing replaced)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(RECORD)
    record = tmp_path / "collections.txt"
    path = [str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return record, {"PYTHONPATH": os.pathsep.join(path), "GC_RECORD": str(record)}


async def test_the_service_freezes_its_start_up_and_collects_once_an_announcement_is_over(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    """Read from the service's own process: every full collection, and from where."""
    record, env = recorded(tmp_path)
    proc = configured_daemon(tmp_path / "config.yaml", broker, dashscope, env=env)
    await proc.start(home)
    try:
        started = record.read_text().splitlines()
        assert "keep_for_good True" in started  # frozen, then measured
        before = len(record.read_text().splitlines())
        await home.say({"text": "Dinner is ready.", "id": "a1"})
        assert (await home.log.outcome("a1"))["event"] == "finished"
        # Idle is posted just before the collection, and published after it.
        await home.log.wait_for(lambda: home.log.states[-1]["state"] == "idle")
        assert "collected True" in record.read_text().splitlines()[before:]
    finally:
        await proc.stop()


async def test_the_service_collects_once_home_assistants_voice_request_is_over(
    tmp_path: Path,
    dashscope: FakeDashScope,
    home: Home,
    daemon_with: Callable[..., Awaitable[DaemonProcess]],
) -> None:
    record, env = recorded(tmp_path)
    port = free_port()
    await daemon_with(
        env=env,
        dashscope__realtime_url=dashscope.realtime_url,
        wyoming={"enabled": True, "host": "127.0.0.1", "port": port, "zeroconf": False},
    )
    await home.log.wait_for(lambda: any(wyoming(s).get("listening") for s in home.log.stats))
    before = len(record.read_text().splitlines())
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text="Hello.").event())
        while (event := await client.read_event()) is not None and event.type != "audio-stop":
            pass
    # The client count falls to 0, the collection, then the stats that say so.
    await home.log.wait_for(
        lambda: (
            wyoming(home.log.stats[-1]).get("clients") == 0
            and any(wyoming(s).get("clients") for s in home.log.stats)
        )
    )
    assert "collected True" in record.read_text().splitlines()[before:]


def wyoming(stats: dict[str, Any]) -> dict[str, Any]:
    found = stats.get("wyoming")
    return found if isinstance(found, dict) else {}
