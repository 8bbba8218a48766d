"""What every benchmark needs: a broker, the fake cloud in its own process, the real daemon
in this process with a player that notes when the first PCM reaches the audio device, and
a table of medians and p95."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# Before PortAudio loads: the default ALSA device is a file, as on a speakerless CI machine.
os.environ["ALSA_CONFIG_PATH"] = str(ROOT / "tests" / "alsa" / "capture.conf")
os.environ.setdefault("EDGE_TTS_ALSA_CAPTURE", "/dev/null")

from edge_tts.config import Config, load_config
from edge_tts.daemon import Daemon
from edge_tts.player import FirstAudio, Player, Start
from edge_tts.secret import Secret

from mosquitto import Broker
from tls import DIRECTORY

sys.path.insert(0, str(ROOT / "bench"))
from fake_cloud import API_KEY


@contextmanager
def fake_cloud(
    first_packet_ms: float, idle_s: float = 60, rtt_ms: float = 0, tls: Path | None = None
) -> Iterator[str]:
    """The fake DashScope server (behind a delaying proxy when rtt_ms) in its own process;
    with tls, over wss:// with certificates written there (a client trusts them, and the
    system's authorities, through SSL_CERT_DIR=tls / tls.DIRECTORY)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "fake_cloud.py"),
            "--first-packet-ms",
            str(first_packet_ms),
            "--idle-s",
            str(idle_s),
            "--rtt-ms",
            str(rtt_ms),
            *(["--tls", str(tls)] if tls else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def compiled(tree: Path, python: str) -> None:
    """Byte-compile the tree's edge_tts for `python`, as pip does when it installs it (and
    Python does on a first run, where it may write): run from source with nothing compiled
    (PYTHONDONTWRITEBYTECODE, as on this machine), every start compiles each module again,
    and the compiler's leftovers stay in the daemon's memory (1.4 MiB, 2026-11-26)."""
    subprocess.run([python, "-m", "compileall", "-q", str(tree / "edge_tts")], check=True)


@contextmanager
def broker() -> Iterator[Broker]:
    with tempfile.TemporaryDirectory() as tmp:
        b = Broker(Path(tmp))
        b.start()
        try:
            yield b
        finally:
            b.stop()


def bench_config(workdir: Path, b: Broker, url: str, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "device": {"name": "bench"},
        "mqtt": {"host": b.host, "port": b.port, "discovery_prefix": None},
        "dashscope": {"inference_url": url},
        "voices": {
            "default": {"engine": "cosyvoice", "model": "cosyvoice-v3-flash", "voice": "longanyang"}
        },
        "cache": {"dir": str(workdir / "cache")},
        # Home Assistant's voice is measured by bench/wyoming_first_audio.py, which turns it on.
        "wyoming": {"enabled": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    os.environ["XDG_STATE_HOME"] = str(workdir / "state")  # the run's own durable queue
    return load_config(str(path))


class TimedPlayer(Player):
    """The real player, noting when each announcement's first PCM was handed to the device."""

    def __init__(self, config: Config) -> None:
        super().__init__(config.audio)
        self.first_audio: asyncio.Queue[float] = asyncio.Queue()
        self.done: asyncio.Queue[bool] = asyncio.Queue()

    async def play(
        self,
        audio: AsyncIterator[bytes],
        *,
        volume: int = 100,
        on_first_audio: FirstAudio | None = None,
        start: Start | None = None,
    ) -> bool:
        def first(at: float) -> None:
            self.first_audio.put_nowait(at)
            if on_first_audio is not None:
                on_first_audio(at)

        complete = await super().play(audio, volume=volume, on_first_audio=first, start=start)
        self.done.put_nowait(complete)
        return complete


@dataclass
class RunningDaemon:
    daemon: Daemon
    player: TimedPlayer
    client: aiomqtt.Client
    topic: str

    async def announce(self, text: str) -> float:
        """Publish like Home Assistant; ms from the publish to the first PCM at the device.
        Returns once the daemon says it is idle again (an identical phrase published while
        the last one is still being wound up would be collapsed as its duplicate)."""
        start = time.monotonic()
        await self.client.publish(self.topic, text.encode(), qos=1)
        first = await asyncio.wait_for(self.player.first_audio.get(), 30)
        await asyncio.wait_for(self.player.done.get(), 60)
        async with asyncio.timeout(30):
            async for message in self.client.messages:
                if json.loads(bytes(message.payload)).get("state") == "idle":  # type: ignore[arg-type]
                    break
        return (first - start) * 1000


@asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[RunningDaemon]:
    """The daemon as `edge-tts serve` runs it, in this process, connected to the broker."""
    player = TimedPlayer(config)
    daemon = Daemon(config, Secret(API_KEY), sink=player)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.link.connected.wait(), 10)
        async with aiomqtt.Client(config.mqtt.host, config.mqtt.port) as client:
            await client.subscribe(daemon.link.topics.state, qos=1)
            async for _ in client.messages:  # the retained state: the daemon is there
                break
            yield RunningDaemon(daemon, player, client, daemon.link.topics.say)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await player.close()


@dataclass
class Row:
    name: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p95(self) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def table(title: str, rows: list[Row], reference_ms: float | None = None) -> str:
    """A Markdown table: n, median, p95, min, max (ms), and the median over a reference."""
    extra = f" | median − {reference_ms:g} ms" if reference_ms is not None else ""
    lines = [
        f"### {title}",
        "",
        f"| case | n | median ms | p95 ms | min ms | max ms{extra} |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else ""),
    ]
    for r in rows:
        over = f" | {r.median - reference_ms:+.1f}" if reference_ms is not None else ""
        lines.append(
            f"| {r.name} | {len(r.values)} | {r.median:.1f} | {r.p95:.1f} | "
            f"{min(r.values):.1f} | {max(r.values):.1f}{over} |"
        )
    return "\n".join(lines) + "\n"


def sdk_rows(script: str, url: str, n: int, text: str, labels: dict[str, str]) -> list[Row]:
    """Run a bench/ script measuring the official SDK in its own process (its threads never
    share our event loop); it prints one JSON object of lists of ms, named as in `labels`."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), url, API_KEY, str(n), text],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return [Row(label, result[key]) for key, label in labels.items()]


async def over_round_trips(
    doc: str,
    measure: Callable[[str, int], Awaitable[list[Row]]],
    title: str,
    first_packet_ms: float,
    idle_s: float = 60,
) -> None:
    """The command line of a latency benchmark (-n, --rtt-ms, --tls): for each added round
    trip, a fake cloud of its own, `measure(url, n)`, and the table, titled `title` + the
    round trip. With --tls the cloud is served over wss://, as the service is, every client
    here and in the SDK's processes trusting it beside the system's authorities (a hashed
    directory, SSL_CERT_DIR)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--rtt-ms", type=float, nargs="+", default=[0, 50])
    p.add_argument("--tls", action="store_true", help="the cloud over TLS (wss://)")
    args = p.parse_args()
    for rtt in args.rtt_ms:
        print(f"running with {rtt:g} ms added round trip...", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            tls = Path(stack.enter_context(tempfile.TemporaryDirectory())) if args.tls else None
            url = stack.enter_context(
                fake_cloud(first_packet_ms, idle_s=idle_s, rtt_ms=rtt, tls=tls)
            )
            if tls:
                os.environ["SSL_CERT_DIR"] = str(tls / DIRECTORY)
            rows = await measure(url, args.n)
        over = f"{title}, {rtt:g} ms added round trip{', over TLS' if tls else ''}"
        print(table(over, rows, reference_ms=first_packet_ms))
