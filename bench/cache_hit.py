"""Announce latency on a phrase-cache hit, beside the warm cloud in the same run.

    .venv/bin/python bench/cache_hit.py [-n 60]

From the MQTT publish to the first PCM byte handed to the audio device: a phrase already in
the cache (n times), and new phrases through the warm cloud connection (fake cloud, first
audio packet 300 ms after the text).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from harness import Row, bench_config, broker, fake_cloud, running_daemon, table

FIRST_PACKET_MS = 300.0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=60)
    args = p.parse_args()
    hit, cloud = Row("cache hit"), Row("cache miss, warm cloud connection")
    with fake_cloud(FIRST_PACKET_MS) as url, broker() as b, tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp), b, url)
        async with running_daemon(config) as d:
            await d.daemon.keeper.wait_warm()
            await d.announce("The washing machine is done.")  # now cached; the device opened
            for n in range(args.n):
                hit.values.append(await d.announce("The washing machine is done."))
                if n % 3 == 0:
                    cloud.values.append(await d.announce(f"New phrase number {n}."))
        stats = d.daemon.cache.stats() if d.daemon.cache else None
    print(
        table(
            f"Time to first audio, cache hit against a warm cloud (first packet "
            f"{FIRST_PACKET_MS:g} ms)",
            [hit, cloud],
        )
    )
    if stats:
        print(
            f"cache after the run: {stats.entries} entries, {stats.hits} hits, "
            f"{stats.misses} misses\n"
        )


if __name__ == "__main__":
    asyncio.run(main())
