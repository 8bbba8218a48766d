"""How fast speech stops: from the MQTT publish of a stop, or of a critical announcement, to
the moment the player has cut the announcement that was playing (device stream aborted).

    .venv/bin/python bench/stop.py [-n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from harness import Row, bench_config, broker, fake_cloud, running_daemon, table

LONG = "A long weather report for the whole of the week ahead, day by day, with the winds."


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    args = p.parse_args()
    stop, critical = Row("stop topic → speech cut"), Row("critical announcement → speech cut")
    with fake_cloud(50) as url, broker() as b, tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp), b, url, cache={"max_mb": 0})
        async with running_daemon(config) as d:
            stop_topic = d.daemon.link.topics.stop
            for n in range(args.n):
                for row in (stop, critical):
                    await d.client.publish(d.topic, f"{LONG} {n} {row.name}", qos=1)
                    await d.player.first_audio.get()
                    await asyncio.sleep(0.5)  # it is speaking: that is the situation measured
                    start = time.monotonic()
                    if row is stop:
                        await d.client.publish(stop_topic, b"", qos=1)
                    else:
                        await d.client.publish(
                            d.topic,
                            json.dumps({"text": f"Smoke {n}!", "priority": "critical"}),
                            qos=1,
                        )
                    assert await d.player.done.get() is False
                    row.values.append((time.monotonic() - start) * 1000)
                    if row is critical:  # the critical one plays to its end
                        await d.player.first_audio.get()
                        await d.player.done.get()
    print(table("Time to cut speech (target: 100 ms)", [stop, critical]))


if __name__ == "__main__":
    asyncio.run(main())
