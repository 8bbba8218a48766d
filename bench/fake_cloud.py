"""The fake DashScope server in a process of its own, optionally behind a proxy that adds
network round-trip time, so a benchmark's client never shares an event loop with it.

    python bench/fake_cloud.py --first-packet-ms 300 --idle-s 60 --rtt-ms 50 [--tls DIR]

prints the URL to use on its first line of output and serves until killed. With --tls it
serves wss://, as the service does, with a certificate from a new authority it writes to
DIR, and there, as tls.DIRECTORY, a hashed directory of the system's authorities and that
one, for a client's SSL_CERT_DIR (tests/tls.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_dashscope import PATH, FakeDashScope
from tls import authority

API_KEY = "sk-bench-0123456789abcdef"


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    one_way_s: float,
    first_extra_s: float = 0.0,
) -> None:
    """Forward bytes, each chunk delivered one_way_s after it was read, order kept."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    extra = first_extra_s
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + one_way_s + extra, data))
            extra = 0.0
            if not data:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()


async def serve_proxy(upstream: str, rtt_s: float) -> int:
    """A TCP proxy adding rtt_s of round trip to every exchange, and one round trip before
    the client's first bytes get through (the TCP handshake a real route costs)."""
    target = urlsplit(upstream)
    one_way = rtt_s / 2

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(
            _pipe(client_r, server_w, one_way, first_extra_s=rtt_s),
            _pipe(server_r, client_w, one_way),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1])


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--first-packet-ms", type=float, default=300)
    p.add_argument("--idle-s", type=float, default=60)
    p.add_argument("--rtt-ms", type=float, default=0)
    p.add_argument("--tls", type=Path, metavar="DIR", help="serve wss://, certificates in DIR")
    args = p.parse_args()
    ca = authority(args.tls) if args.tls else None
    fake = FakeDashScope(
        API_KEY,
        first_packet_delay_s=args.first_packet_ms / 1000,
        idle_timeout_s=args.idle_s,
        tls=ca.server() if ca else None,
    )
    url = await fake.start()
    if args.rtt_ms:
        port = await serve_proxy(url, args.rtt_ms / 1000)
        url = f"{'wss' if ca else 'ws'}://127.0.0.1:{port}{PATH}"
    print(url, flush=True)
    if ca:
        ca.directory_with_system()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
