"""The phrase cache: keys, integrity, atomic entries, LRU eviction, sharing between processes,
and what a household hears through the daemon: a repeated phrase from disk, at any volume,
with the cloud gone."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_tts.cache import PhraseCache, cache_key
from edge_tts.config import Voice
from edge_tts.engines import SynthesisRequest
from edge_tts.player import apply_volume

from conftest import API_KEY, Capture, DaemonProcess, Home, split_speech, write_config
from fake_dashscope import FakeDashScope, pcm_for
from mosquitto import Broker

VOICE = Voice(name="default", engine="cosyvoice", model="cosyvoice-v3-flash", voice="longanyang")
RATE = 24000


def request(text: str = "The washing machine is done.", **changes: object) -> SynthesisRequest:
    voice = replace(VOICE, **{k: v for k, v in changes.items() if hasattr(VOICE, k)})
    rest = {k: v for k, v in changes.items() if not hasattr(VOICE, k)}
    return SynthesisRequest(text=text, voice=voice, sample_rate=RATE, **rest)  # type: ignore[arg-type]


def entries(root: Path) -> list[Path]:
    return sorted(root.glob("??/*.pcm"))


def nonzero(pcm: bytes) -> bytes:
    """The samples that are not silence (split_speech drops zero samples the same way)."""
    return b"".join(pcm[i : i + 2] for i in range(0, len(pcm), 2) if pcm[i : i + 2] != b"\0\0")


async def chunks(*parts: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if fail:
        raise RuntimeError("synthesis failed half way")


async def store(cache: PhraseCache, key: str, pcm: bytes) -> None:
    async for _ in cache.record(chunks(pcm[: len(pcm) // 2], pcm[len(pcm) // 2 :]), key, RATE):
        pass


# --- keys ----------------------------------------------------------------------------------


def test_the_key_covers_what_changes_the_sound_and_nothing_else() -> None:
    base = cache_key(request())
    assert cache_key(request("  The washing   machine\nis done. ")) == base
    assert cache_key(request(task_id="0" * 32)) == base  # a task id changes nothing
    changed = [
        request("The washing machine is done!"),
        request(voice="longxiaochun"),
        request(model="cosyvoice-v3-plus"),
        request(engine="qwen"),
        request(rate=1.2),
        request(pitch=0.8),
        request(volume=80),  # the cloud's own level, not the playback gain
        request(instructions="Whisper"),
        request(seed=7),
        request(language_hints=("en",)),
        request(ssml=True),
        replace(request(), sample_rate=16000),
    ]
    keys = {cache_key(r) for r in changed}
    assert base not in keys and len(keys) == len(changed)


# --- integrity -----------------------------------------------------------------------------


async def test_an_entry_reads_back_exactly(tmp_path: Path) -> None:
    cache = PhraseCache.open(tmp_path, 10**6)
    pcm = pcm_for("Front door opened.")
    await store(cache, "ab" * 32, pcm)
    assert cache.load("ab" * 32, RATE) == pcm
    assert cache.load("cd" * 32, RATE) is None
    assert cache.load("ab" * 32, 16000) is None  # another rate is another sound


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
async def test_a_damaged_entry_is_detected_and_removed(tmp_path: Path, damage: str) -> None:
    cache = PhraseCache.open(tmp_path, 10**6)
    key = "ef" * 32
    await store(cache, key, pcm_for("Garage door is open."))
    path = cache.path(key)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) - 1000]
    elif damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    assert cache.load(key, RATE) is None
    assert not path.exists()


async def test_failed_and_cut_syntheses_leave_nothing(tmp_path: Path) -> None:
    cache = PhraseCache.open(tmp_path, 10**6)
    pcm = pcm_for("Half a sentence.")
    with pytest.raises(RuntimeError):
        async for _ in cache.record(chunks(pcm[:4800], fail=True), "aa" * 32, RATE):
            pass
    recording = cache.record(chunks(pcm[:4800], pcm[4800:]), "bb" * 32, RATE)
    await anext(recording)
    await recording.aclose()  # a stop half way
    assert entries(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_dead_writers_leftovers_never_play_and_are_swept_at_once(
    tmp_path: Path,
) -> None:
    cache = PhraseCache.open(tmp_path, 10**6)
    part = tmp_path / "tmp" / f"{'cc' * 32}.999.deadbeef.part"
    part.write_bytes(b"\0" * 84 + pcm_for("Power cut.")[:1000])  # written a second ago
    # A live writer's unfinished entry, in another process, is left alone.
    live = cache.record(chunks(pcm_for("Still writing.")), "dd" * 32, RATE)
    await anext(live)
    assert cache.load("cc" * 32, RATE) is None
    PhraseCache.open(tmp_path, 10**6)  # the next start sweeps what no writer holds
    assert not part.exists()
    (still,) = (tmp_path / "tmp").glob("*.part")
    assert still.name.startswith("dd" * 32)
    async for _ in live:
        pass
    assert cache.load("dd" * 32, RATE) == pcm_for("Still writing.")


async def test_an_entry_swapped_for_another_valid_entry_is_not_played(tmp_path: Path) -> None:
    cache = PhraseCache.open(tmp_path, 10**6)
    await store(cache, "aa" * 32, pcm_for("Front door open."))
    await store(cache, "bb" * 32, pcm_for("Back door open."))
    cache.path("aa" * 32).write_bytes(cache.path("bb" * 32).read_bytes())
    assert cache.load("aa" * 32, RATE) is None  # the other phrase's entry: removed
    assert not cache.path("aa" * 32).exists()
    assert cache.load("bb" * 32, RATE) == pcm_for("Back door open.")


# --- size ----------------------------------------------------------------------------------


async def test_eviction_removes_the_least_recently_used_first_across_restarts(
    tmp_path: Path,
) -> None:
    pcm = pcm_for("x" * 10)  # 0.6 s: 28800 bytes
    size = len(pcm) + 84  # the header: magic, rate, length, key, checksum
    cache = PhraseCache.open(tmp_path, 3 * size)
    keys = [f"{n:02d}" * 32 for n in range(4)]
    for age, key in enumerate(keys[:3]):
        await store(cache, key, pcm)
        os.utime(cache.path(key), (1000 + age, 1000 + age))  # 0 oldest, 2 newest
    cache = PhraseCache.open(tmp_path, 3 * size)  # a restart
    assert cache.load(keys[0], RATE) == pcm  # 0 is now the most recently used
    await store(cache, keys[3], pcm)  # one too many
    left = {p.stem for p in entries(tmp_path)}
    assert left == {keys[0], keys[2], keys[3]}  # 1 was the least recently used
    assert cache.stats().bytes <= 3 * size


# --- sharing -------------------------------------------------------------------------------

WORKER = """
import asyncio, sys
from pathlib import Path
from edge_tts.cache import PhraseCache
sys.path.insert(0, {tests!r})
from fake_dashscope import pcm_for

async def main():
    cache = PhraseCache.open(Path({root!r}), 10**9)
    cache.count_every_s = 0  # every count to the shared file, under its lock
    for n in range(40):
        key = f"{{n % 10:02d}}" * 32
        pcm = pcm_for(f"phrase {{n % 10}}")
        got = cache.load(key, 24000)
        if got is None:
            cache.count(misses=1)
            async for _ in cache.record(iter_once(pcm), key, 24000):
                pass
        else:
            assert got == pcm, "a reader saw a wrong entry"
            cache.count(hits=1)

async def iter_once(pcm):
    yield pcm

asyncio.run(main())
"""


async def test_two_processes_share_the_cache_safely(tmp_path: Path) -> None:
    script = WORKER.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    cache = PhraseCache.open(tmp_path, 10**9)
    stats = cache.stats()
    assert stats.hits + stats.misses == 80  # no count lost to a race
    assert stats.entries == 10
    for n in range(10):
        assert cache.load(f"{n:02d}" * 32, RATE) == pcm_for(f"phrase {n}")


def test_counts_reach_the_disk_once_a_minute_and_at_exit(tmp_path: Path) -> None:
    cache = PhraseCache.open(tmp_path, 10**9)
    counters = tmp_path / "counters.json"
    cache.count(misses=1)
    cache.count(hits=2)
    assert not counters.exists()  # an SD card is not rewritten on every announcement
    assert (cache.stats().hits, cache.stats().misses) == (2, 1)  # this process sees them
    assert not counters.exists()  # and reading them writes nothing
    cache._counted_at -= 61  # a minute later
    cache.count(hits=1)
    assert json.loads(counters.read_text()) == {"hits": 3, "misses": 1}
    cache.count(misses=1)
    cache.flush_counts()  # at exit
    assert json.loads(counters.read_text()) == {"hits": 3, "misses": 2}
    assert (cache.stats().hits, cache.stats().misses) == (3, 2)  # nothing counted twice


async def test_keeping_an_entry_lists_the_directory_only_when_the_cache_may_be_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pcm = pcm_for("an entry")
    size = len(pcm) + 84  # the PCM and its header (magic, rate, length, key, digest)
    cache = PhraseCache.open(tmp_path, max_bytes=5 * size)
    cache.stats()  # the daemon's one scan, at start
    listings = 0
    entries = PhraseCache._entries

    def counted(self: PhraseCache) -> Iterator[tuple[Path, int, float]]:
        nonlocal listings
        listings += 1
        return entries(self)

    monkeypatch.setattr(PhraseCache, "_entries", counted)

    async def keep(n: int) -> None:
        async def once() -> AsyncIterator[bytes]:
            yield pcm

        async for _ in cache.record(once(), f"{n:02d}" * 32, RATE):  # type: ignore[arg-type]
            pass

    for n in range(5):
        await keep(n)
    assert listings == 0 and cache.footprint == (5, 5 * size)
    await keep(5)  # over the limit: now it looks, and evicts the least recently used
    assert listings == 1 and cache.footprint == (5, 5 * size)
    assert not cache.path("00" * 32).exists()


# --- through the daemon ----------------------------------------------------------------------


async def until_exists(root: Path, pattern: str, timeout: float = 15) -> None:
    """Wait for a file to appear: the filesystem offers no event to wait on, so it is looked
    for every 10 ms, within a timeout."""
    async with asyncio.timeout(timeout):
        while not any(root.glob(pattern)):  # noqa: ASYNC110, ASYNC240 (no event to wait on)
            await asyncio.sleep(0.01)


def cache_dir(daemon: DaemonProcess) -> Path:
    return daemon.config.parent / "cache"


async def test_a_repeated_phrase_plays_from_disk_at_any_volume(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    text = "The washing machine is done."
    await home.say({"text": text, "id": "first"})
    assert (await home.log.outcome("first"))["event"] == "finished"
    assert (await home.log.event("first", "started"))["source"] == "cloud"
    assert split_speech(capture.read())[1] == pcm_for(text)

    await home.say({"text": text, "id": "again", "volume": 40})
    assert (await home.log.outcome("again"))["event"] == "finished"
    started = await home.log.event("again", "started")
    assert started["source"] == "cache" and "connection" not in started
    assert split_speech(capture.read())[1] == nonzero(apply_volume(pcm_for(text), 40))

    await home.say({"text": text, "id": "loud", "volume": 100})
    await home.log.outcome("loud")
    assert (await home.log.event("loud", "started"))["source"] == "cache"
    assert split_speech(capture.read())[1] == pcm_for(text)
    assert len(dashscope.tasks) == 1  # paid for once
    assert len(entries(cache_dir(daemon))) == 1


async def test_cached_phrases_play_with_the_cloud_gone(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    await home.say({"text": "Front door opened.", "id": "warm-up"})
    await home.log.outcome("warm-up")
    await dashscope.stop()
    dashscope.kill_connections()
    await home.say({"text": "Front door opened.", "id": "offline"})
    assert (await home.log.outcome("offline"))["event"] == "finished"
    assert (await home.log.event("offline", "started"))["source"] == "cache"
    assert split_speech(capture.read())[1] == pcm_for("Front door opened.")
    await home.say({"text": "Something new.", "id": "new"})
    assert (await home.log.outcome("new"))["event"] == "failed"


@pytest.mark.parametrize("marker", ["[fail]", "[drop]", "[stall]"])
async def test_a_synthesis_that_fails_or_is_cut_leaves_no_entry(
    daemon: DaemonProcess, home: Home, marker: str
) -> None:
    await home.say({"text": f"Broken {marker}", "id": "broken"})
    assert (await home.log.outcome("broken"))["event"] == "failed"
    assert entries(cache_dir(daemon)) == []


async def test_an_announcement_stopped_while_synthesizing_leaves_no_entry(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_interval_s = 0.1  # the cloud still synthesizing when the stop comes
    await home.say({"text": "A long story that nobody wants to hear to the end.", "id": "long"})
    await home.log.event("long", "started")
    await home.stop()
    assert (await home.log.event("long", "dropped"))["error"] == "stopped"
    await dashscope.wait_tasks(1)
    assert entries(cache_dir(daemon)) == []


async def test_a_phrase_whose_synthesis_completed_is_kept_even_if_playback_was_stopped(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    """The whole phrase arrived before the stop: the entry is complete and correct, and
    keeping it saves the next one a cloud call."""
    text = "A long story that nobody wants to hear to the end. " * 3
    await home.say({"text": text, "id": "long"})
    await home.log.event("long", "started")
    # The whole phrase reached the daemon (the server having sent it is not enough): the
    # entry is on disk. Then the stop must not take it back.
    await until_exists(cache_dir(daemon), "??/*.pcm")
    await home.stop()

    # Stopped, or, on a device that plays faster than real time, already finished: either
    # way the synthesis was whole.
    def ended() -> bool:
        return any(
            e["id"] == "long" and e["event"] in ("dropped", "finished") for e in home.log.events
        )

    await home.log.wait_for(ended)
    await home.say({"text": text, "id": "again"})
    assert (await home.log.outcome("again"))["event"] == "finished"
    assert (await home.log.event("again", "started"))["source"] == "cache"
    # Sent sentence by sentence: the fake's speech for each, in order.
    sentence = "A long story that nobody wants to hear to the end."
    assert split_speech(capture.read())[1] == pcm_for(sentence + " ") * 2 + pcm_for(sentence)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
async def test_a_damaged_entry_is_synthesized_afresh(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope, damage: str
) -> None:
    text = "Garage door is open."
    await home.say({"text": text, "id": "one"})
    await home.log.outcome("one")
    (path,) = entries(cache_dir(daemon))
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[:-4800]
    else:
        blob[-100] ^= 0x40
    path.write_bytes(bytes(blob))
    await home.say({"text": text, "id": "two"})
    assert (await home.log.outcome("two"))["event"] == "finished"
    assert (await home.log.event("two", "started"))["source"] == "cloud"
    assert split_speech(capture.read())[1] == pcm_for(text)  # not a damaged byte played
    assert len(dashscope.tasks) == 2
    (healed,) = entries(cache_dir(daemon))
    assert (
        hashlib.sha256(healed.read_bytes()[84:]).digest() == hashlib.sha256(pcm_for(text)).digest()
    )


async def test_cache_false_bypasses_the_cache(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    for n in range(2):
        await home.say({"text": "Private.", "id": f"p{n}", "cache": False})
        assert (await home.log.outcome(f"p{n}"))["event"] == "finished"
        assert (await home.log.event(f"p{n}", "started"))["source"] == "cloud"
    assert len(dashscope.tasks) == 2
    assert entries(cache_dir(daemon)) == []


# --- the cache command -----------------------------------------------------------------------


def edge_tts(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DASHSCOPE_API_KEY="sk-test-0123456789abcdef")
    return subprocess.run(
        [sys.executable, "-m", "edge_tts", "cache", "-c", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cache_warm_stats_and_clear(
    tmp_path: Path, daemon: DaemonProcess, dashscope: FakeDashScope, home: Home
) -> None:
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("# the automations' phrases\nFront door opened.\n\nDinner is ready.\n")
    listed = tmp_path / "more.yaml"
    listed.write_text("- Dinner is ready.\n- Goodnight.\n")

    run = await asyncio.to_thread(edge_tts, daemon.config, "warm", str(phrases))
    assert run.returncode == 0, run.stderr
    assert "2 phrases: 2 synthesized and cached, 0 already cached, 0 failed" in run.stdout
    run = await asyncio.to_thread(edge_tts, daemon.config, "warm", str(listed), "-v", "default")
    assert "2 phrases: 1 synthesized and cached, 1 already cached, 0 failed" in run.stdout
    assert sorted(t.texts[0] for t in dashscope.tasks) == [
        "Dinner is ready.",
        "Front door opened.",
        "Goodnight.",
    ]

    # The running daemon speaks a warmed phrase from disk.
    await home.say({"text": "Goodnight.", "id": "night"})
    assert (await home.log.event("night", "started"))["source"] == "cache"
    await home.log.outcome("night")
    # Its hit reaches the counters file within a minute, and at its clean stop at the latest.
    assert await daemon.stop() == 0

    stats = (await asyncio.to_thread(edge_tts, daemon.config, "stats")).stdout
    lines = dict(line.split(None, 1) for line in stats.splitlines() if " " in line)
    assert lines["entries"].strip() == "3"
    assert lines["hits"].strip() == "2" and lines["misses"].strip() == "3"
    assert lines["hit"].strip() == "rate   40%"
    assert lines["oldest"].strip() != "-"

    cleared = await asyncio.to_thread(edge_tts, daemon.config, "clear")
    assert cleared.stdout.startswith("removed 3 entries")
    assert entries(cache_dir(daemon)) == []


async def test_cache_warm_refuses_a_bad_phrase_file(tmp_path: Path, daemon: DaemonProcess) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("phrases: not a list\n")
    run = await asyncio.to_thread(edge_tts, daemon.config, "warm", str(bad))
    assert run.returncode == 2
    assert "must be a YAML list of phrases" in run.stderr and "Traceback" not in run.stderr


# --- the disk under the cache ----------------------------------------------------------------


def tiny_filesystem(directory: Path, size: str) -> list[str]:
    """A command prefix: the daemon runs in a mount namespace of its own (no root needed) in
    which `directory` is a tmpfs of `size`, a real filesystem that really fills up."""
    return [
        "unshare",
        "-rm",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"',
        str(directory),
    ]


def remount(daemon: DaemonProcess, directory: Path, options: str) -> None:
    assert daemon.proc is not None
    subprocess.run(
        [
            "nsenter",
            "-t",
            str(daemon.proc.pid),
            "-U",
            "-m",
            "--preserve-credentials",
            "mount",
            "-o",
            f"remount,{options}",
            str(directory),
        ],
        check=True,
    )


async def test_the_cache_survives_a_full_then_read_only_disk(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    config = write_config(tmp_path / "c.yaml", broker, dashscope, cache__dir=str(tiny))
    daemon = DaemonProcess(
        config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY), wrap=tiny_filesystem(tiny, "64k")
    )
    await daemon.start(home)

    async def speak(text: str, ident: str) -> str:
        await home.say({"text": text, "id": ident})
        outcome = await home.log.outcome(ident)
        assert outcome["event"] == "finished", outcome
        assert pcm_for(text) in split_speech(capture.read())[1]  # whole, whatever the disk did
        return str((await home.log.event(ident, "started"))["source"])

    def cache_said(writing: bool, problem: str | None = None) -> Any:
        def said() -> bool:
            last = home.log.stats[-1]["cache"] if home.log.stats else {}
            return last.get("writing") is writing and (
                problem is None or problem in str(last.get("problem"))
            )

        return said

    try:
        long_phrase = "The smoke alarm in the kitchen is ringing now."  # ~130 kB: does not fit
        assert await speak("Hi there.", "small") == "cloud"
        assert await speak(long_phrase, "full") == "cloud"
        await home.log.wait_for(cache_said(False, "No space left on device"))
        assert await speak("Hi there.", "small-again") == "cache"  # what was kept still plays

        remount(daemon, tiny, "size=16m")  # room again
        assert await speak(long_phrase, "room") == "cloud"
        await home.log.wait_for(cache_said(True))
        assert await speak(long_phrase, "kept") == "cache"

        remount(daemon, tiny, "ro")
        assert await speak(long_phrase, "hit-on-read-only") == "cache"
        assert await speak("Something new.", "new-on-read-only") == "cloud"
        await home.log.wait_for(cache_said(False, "Read-only file system"))
        assert daemon.running
    finally:
        await daemon.stop()
    assert b"Traceback" not in daemon.stderr


async def test_a_cache_directory_removed_under_the_daemon_is_made_again(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    await home.say({"text": "Before.", "id": "before"})
    assert (await home.log.outcome("before"))["event"] == "finished"
    shutil.rmtree(cache_dir(daemon))
    for ident in ("after", "again"):
        await home.say({"text": "After.", "id": ident})
        assert (await home.log.outcome(ident))["event"] == "finished"
    assert (await home.log.event("again", "started"))["source"] == "cache"
