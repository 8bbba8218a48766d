"""What a new TLS connection to the cloud costs the client: CPU time and wall time from the
call to an open WebSocket, with the daemon's one shared context (edge_tts/trust.py) against
a context made per connection (what websockets does when given none, as the tree before did,
and as the SDK's client does for each cold connection).

    .venv/bin/python bench/tls_connect.py [-n 20]

The fake cloud runs in its own process over wss:// (a test authority trusted beside the
system's ~140, in a hashed directory as Debian keeps /etc/ssl/certs; a context made per
connection reads Debian's bundle of them whole, as on a Pi). CPU is this process's (the
client's), from time.process_time(); the event loop is held for all of it but the network
waits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import websockets

from edge_tts.trust import cloud_context

from harness import API_KEY, Row, fake_cloud, table
from tls import DIRECTORY


async def connections(url: str, n: int, shared: bool) -> tuple[list[float], list[float]]:
    cpu, wall = [], []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        context = await cloud_context() if shared else ssl.create_default_context()
        ws = await websockets.connect(url, ssl=context, additional_headers=headers)
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
        await ws.close()
    return cpu, wall


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fake_cloud(300, tls=Path(tmp)) as url:
        os.environ["SSL_CERT_DIR"] = str(Path(tmp) / DIRECTORY)
        await connections(url, 2, shared=True)  # the shared context made; both paths warmed
        rows = []
        for label, shared in (("a context per connection", False), ("one shared context", True)):
            cpu, wall = await connections(url, args.n, shared)
            rows += [Row(f"{label}: CPU (ms)", cpu), Row(f"{label}: wall (ms)", wall)]
    print(table("A new TLS connection to the cloud, from the call to an open WebSocket", rows))
    print(f"({sys.executable})", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
