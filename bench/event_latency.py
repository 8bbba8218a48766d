"""How soon Home Assistant hears of an announcement: from a QoS 1 `say` to its `queued` event
and to the `speaking` state, beside the broker's own round trip and beside the same daemon
with Nagle's algorithm left on (no TCP_NODELAY), all in one run.

    .venv/bin/python bench/event_latency.py [-n 50]

Each announcement is a phrase already in the cache, and the next is published only after
the last finished, so every one starts at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

import edge_tts.mqtt

from harness import Row, bench_config, broker, fake_cloud, running_daemon, table

PHRASE = "The washing machine is done."


async def measure(config: Any, n: int, label: str) -> tuple[Row, Row]:
    queued, speaking = Row(f"{label}: say → queued event"), Row(f"{label}: say → state speaking")
    async with (
        running_daemon(config) as d,
        aiomqtt.Client(config.mqtt.host, config.mqtt.port) as ha,
    ):
        topics = d.daemon.link.topics
        await ha.subscribe([(topics.event, 1), (topics.state, 1)])
        for i in range(n + 1):
            ident = f"{label}-{i}"
            start = time.monotonic()
            await d.client.publish(topics.say, json.dumps({"text": PHRASE, "id": ident}), qos=1)
            marks: dict[str, float] = {}
            async with asyncio.timeout(30):
                async for message in ha.messages:
                    now = time.monotonic()
                    body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    if body.get("id") != ident:
                        continue
                    kind = body["event"] if str(message.topic) == topics.event else body["state"]
                    marks.setdefault(kind, now)
                    if "finished" in marks and "speaking" in marks:
                        break
            if i:  # the first one fills the cache and opens the device
                queued.values.append((marks["queued"] - start) * 1000)
                speaking.values.append((marks["speaking"] - start) * 1000)
    return queued, speaking


async def round_trips(config: Any, n: int) -> Row:
    row = Row("reference: a client with Nagle on, publish → own subscription (QoS 1)")
    async with aiomqtt.Client(config.mqtt.host, config.mqtt.port) as client:
        await client.subscribe("bench/echo", qos=1)
        for _ in range(n):
            start = time.monotonic()
            await client.publish("bench/echo", b"x", qos=1)
            async for _message in client.messages:
                row.values.append((time.monotonic() - start) * 1000)
                break
    return row


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=50)
    args = p.parse_args()
    rows: list[Row] = []
    with fake_cloud(300) as url, broker() as b, tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp), b, url)
        rows.append(await round_trips(config, args.n))
        rows.extend(await measure(config, args.n, "edge-tts"))
        original = edge_tts.mqtt.make_client

        def with_nagle(*a: Any, **kw: Any) -> aiomqtt.Client:
            client = original(*a, **kw)
            client._socket_options = ()  # as before TCP_NODELAY was set
            return client

        edge_tts.mqtt.make_client = with_nagle  # type: ignore[assignment]
        try:
            rows.extend(await measure(config, args.n, "without TCP_NODELAY"))
        finally:
            edge_tts.mqtt.make_client = original  # type: ignore[assignment]
    print(table("Events and state after a QoS 1 say (our Mosquitto, set_tcp_nodelay true)", rows))


if __name__ == "__main__":
    asyncio.run(main())
