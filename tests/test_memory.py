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
        if caller == "keep_for_good":  # start-up is over: what its connections will read with
            from asyncio import sslproto
            _out.write(f"TLS read buffer {sslproto.SSLProtocol.max_size}\\n")


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
        assert "TLS read buffer 65536" in started  # not asyncio's 256 KiB per connection
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


def test_page_out_gives_a_files_pages_back_and_loses_nothing(tmp_path: Path) -> None:
    """What a library run once at start-up leaves resident can be given back: the pages of
    a mapped file go, and come back from the file when read; a mapping with a page copied on
    write (what a library's relocations are) is left alone, so nothing goes to swap."""
    out = fresh_python(
        f"""
    import mmap, os
    from edge_tts import memory

    def mapped(path):  # (resident KiB, copied-on-write KiB) of this process's mapping of path
        found, rss, anon = False, 0, 0
        for line in open("/proc/self/smaps"):
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                found = line.rstrip("\\n").endswith(path)
            elif found and line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif found and line.startswith("Anonymous:"):
                anon += int(line.split()[1])
        return rss, anon

    data = bytes(range(256)) * 4096  # 1 MiB
    paths = [{str(tmp_path / "clean")!r}, {str(tmp_path / "written")!r}]
    for path in paths:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # clean in the page cache, as a library's code is
    clean = mmap.mmap(os.open(paths[0], os.O_RDONLY), 0, mmap.MAP_PRIVATE, mmap.PROT_READ)
    written = mmap.mmap(os.open(paths[1], os.O_RDWR), 0, mmap.MAP_PRIVATE)
    assert clean[:] == data and written[:] == data  # every page resident
    written[0] = 7  # one page copied on write
    print(mapped(paths[0]), mapped(paths[1]))
    given = memory.page_out(lambda path: path in paths)
    print(given, mapped(paths[0]), mapped(paths[1]))
    print(clean[:] == data, written[0], written[1:] == data[1:])
    """
    )
    before, after, read = out.splitlines()
    assert before == "(1024, 0) (1024, 4)"
    given, rest = after.split(" ", 1)
    assert int(given) == 1024  # what it held alone of the clean mapping
    assert rest == "(0, 0) (1024, 4)"
    assert read == "True 7 True"


def test_the_players_start_gives_back_what_jack_left_and_nothing_it_plays_with() -> None:
    """Debian's PortAudio (Raspberry Pi OS's too) starts JACK's client to find no server: the
    pages of JACK's libraries, which nothing runs again, are given back when the service's
    player starts; PortAudio's, ALSA's and the C library's are not, and a second start (a
    reload with new audio settings) gives back nothing more."""
    out = fresh_python(
        """
    import asyncio, os
    from edge_tts import memory, player
    from edge_tts.config import AudioConfig

    chosen, page_out = [], memory.page_out

    def recorder(pick):
        chosen.append(sorted(os.path.basename(p) for p in memory.mapped_files() if pick(p)))
        return page_out(pick)

    memory.page_out = recorder
    for _ in range(2):
        asyncio.run(player.Player(AudioConfig()).prepare())
    print(len(chosen), *chosen[0])
    """
    )
    calls, *names = out.split()
    assert calls == "1"
    assert any(n.startswith("libjack.so") for n in names)
    assert all(n.startswith(("libjack.so", "libdb-", "libstdc++.so")) for n in names), names


def test_without_proc_the_player_starts_and_gives_back_nothing() -> None:
    """Where there is no /proc to read (another system, a sandbox that hides it), nothing
    is given back and PortAudio starts as before."""
    out = fresh_python(
        """
    from edge_tts import memory, player
    from edge_tts.config import AudioConfig

    memory.PROC_SELF = "/nonexistent"
    print(player.load_portaudio(AudioConfig()), memory.mapped_files(), memory.page_out(bool))
    """
    )
    assert out.split() == ["None", "set()", "0"]
