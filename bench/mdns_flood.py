"""What the network's mDNS traffic costs `edge-tts serve` while it advertises Home
Assistant's voice: zeroconf keeps every record answered on the network for its TTL, whoever
asked, so a crowded home network (or a peer sending records of made-up names) is memory the
quiet network of `bench/footprint.py` never shows.

    .venv/bin/python bench/mdns_flood.py [-n 3] [--python PY]

Each run starts the daemon as `bench/footprint.py` does (its own process, compiled, the
cloud the fake over TLS, Wyoming on 127.0.0.1 advertised by zeroconf), reads its resident
memory 2 s after `online` (the reference), then multicasts answers of records of distinct
names (a TXT record each, TTL 4500 s, ten to a packet, as a device answering a browser
does) to 224.0.0.251:5353 on loopback, where it listens, and reads its memory 2 s after each
step. 300 records is a crowded home (about 50 devices answering Home Assistant's browsers);
past 10,000, zeroconf (0.149.7 and later) drops the oldest.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from footprint import ROOT, free_port, rss_mib, serving
from zeroconf import DNSOutgoing, DNSText, const

from harness import Row, broker, compiled, fake_cloud, table
from tls import DIRECTORY

STEPS = (300, 3_000, 10_000, 30_000)  # records on the network, in all


def packets(first: int, last: int) -> list[bytes]:
    found = []
    for start in range(first, last, 10):
        out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
        for n in range(start, min(start + 10, last)):
            name = f"device-{n:06d}._hap._tcp.local."
            record = DNSText(name, const._TYPE_TXT, const._CLASS_IN, 4500, b"\x0bmd=A device")
            out.add_answer_at_time(record, 0)
        found.extend(out.packets())
    return found


async def one_run(python: str, url: str, b_host: str, b_port: int, ca: Path) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        config: dict[str, Any] = {
            "device": {"name": f"bench-{Path(tmp).name}"},
            "mqtt": {"host": b_host, "port": b_port, "discovery_prefix": None},
            "dashscope": {"inference_url": url},
            "cache": {"dir": f"{tmp}/cache"},
            "wyoming": {"host": "127.0.0.1", "port": free_port(), "zeroconf": True},
        }
        env = {"SSL_CERT_DIR": str(ca)}
        async with serving(ROOT, python, Path(tmp), config, env) as (_, proc, _, _):
            await asyncio.sleep(2)  # settle: the warm connections open, the advert sent
            readings = [rss_mib(proc.pid)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
                flood.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
                )
                sent = 0
                for step in STEPS:
                    for packet in packets(sent, step):
                        flood.sendto(packet, ("224.0.0.251", 5353))
                        await asyncio.sleep(0.001)  # paced: a socket buffer that overflows
                    sent = step  # would drop what the daemon never saw
                    await asyncio.sleep(2)  # the daemon reads what is queued
                    readings.append(rss_mib(proc.pid))
    return readings


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=3)
    p.add_argument("--python", default=sys.executable, help="the interpreter the daemon runs on")
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tls, broker() as b, fake_cloud(300, tls=Path(tls)) as url:
        compiled(ROOT, args.python)
        for n in range(args.n):
            print(f"run {n + 1} of {args.n}", file=sys.stderr)
            runs.append(await one_run(args.python, url, b.host, b.port, Path(tls) / DIRECTORY))
    names = ["idle, before any (MiB)"] + [f"{s:,} records on the network (MiB)" for s in STEPS]
    rows = [Row(name, [r[i] for r in runs]) for i, name in enumerate(names)]
    print(table("Resident memory of `edge-tts serve` under the network's mDNS answers", rows))


if __name__ == "__main__":
    asyncio.run(main())
