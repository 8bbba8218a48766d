"""Home Assistant finds the voice by itself: the Wyoming server advertised as
`_wyoming._tcp` over mDNS by zeroconf in the daemon. Seen as Home Assistant sees it: a
zeroconf browser on the network (here loopback)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge_tts import advertise as advertising
from edge_tts.advertise import advertise
from edge_tts.config import parse_config

from conftest import Home, Served, free_port

TYPE = "_wyoming._tcp.local."
KITCHEN = f"edge-tts-kitchen.{TYPE}"


class Browser:
    """Home Assistant's side: what a zeroconf browser on loopback hears, in order."""

    def __init__(self, zc: AsyncZeroconf) -> None:
        self.zc = zc
        self._heard: asyncio.Queue[tuple[ServiceStateChange, str]] = asyncio.Queue()

    def on_change(
        self, zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        self._heard.put_nowait((state_change, name))

    async def until(self, change: ServiceStateChange, name: str, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while await self._heard.get() != (change, name):
                pass

    async def info(self, name: str) -> AsyncServiceInfo:
        info = AsyncServiceInfo(TYPE, name)
        assert await info.async_request(self.zc.zeroconf, 3000), f"{name} did not resolve"
        return info


@asynccontextmanager
async def browsing() -> AsyncIterator[Browser]:
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    browser = Browser(zc)
    watching = AsyncServiceBrowser(zc.zeroconf, TYPE, handlers=[browser.on_change])
    try:
        yield browser
    finally:
        await watching.async_cancel()
        await zc.async_close()


async def found_in_process(host: str) -> AsyncServiceInfo:
    """`advertise` for a server on `host`, in this process: what a browser finds, once it
    was advertised by zeroconf in the process."""
    config = parse_config(
        {"device": {"name": "kitchen"}, "wyoming": {"host": host, "port": free_port()}}
    )
    async with browsing() as browser:
        advert = await advertise(config)
        assert advert is not None
        try:
            assert advert.how == "zeroconf"
            await browser.until(ServiceStateChange.Added, KITCHEN)
            info = await browser.info(KITCHEN)
        finally:
            await advert.close()
    assert info.port == config.wyoming.port
    return info


async def test_a_server_on_every_address_is_advertised_on_the_one_the_network_reaches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listening on every address (the default), the voice is advertised on the address
    this machine reaches the local network from (here, as the network has it: loopback)."""
    monkeypatch.setattr(advertising, "_local_addresses", lambda: ["127.0.0.1"])
    assert (await found_in_process("0.0.0.0")).parsed_addresses() == ["127.0.0.1"]


async def test_a_server_on_one_address_is_advertised_on_that_address() -> None:
    assert (await found_in_process("127.0.0.1")).parsed_addresses() == ["127.0.0.1"]


async def test_the_daemon_advertises_the_voice_itself(
    serve: Callable[..., Awaitable[Served]], home: Home
) -> None:
    """What Home Assistant's zeroconf discovery sees: `_wyoming._tcp` with our port, from the
    daemon's own responder."""
    async with browsing() as browser:
        served = await serve(wyoming={"zeroconf": True})
        await browser.until(ServiceStateChange.Added, KITCHEN)
        info = await browser.info(KITCHEN)
    assert info.port == served.port
    assert "127.0.0.1" in info.parsed_addresses()
    await home.log.wait_for(
        lambda: any(
            (s.get("wyoming") or {}).get("advertised") == "zeroconf" for s in home.log.stats
        )
    )


async def test_a_network_that_refuses_multicast_loses_only_the_advertisement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's sandbox (or a network without multicast) refuses zeroconf's sockets:
    the server must serve on, unadvertised. The refusal is simulated: no sandbox runs here."""
    import zeroconf.asyncio

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr(zeroconf.asyncio, "AsyncZeroconf", refused)
    config = parse_config({"wyoming": {"host": "127.0.0.1", "port": free_port()}})
    assert await advertise(config) is None


async def test_a_flood_of_mdns_records_is_held_within_a_bound_and_the_voice_stays_found() -> None:
    """Every mDNS answer on the network lands in the advertiser's cache, each kept for its
    TTL: a crowded network, or a peer sending records of made-up names, would grow the
    service without end. zeroconf 0.149.7 and later (pyproject's floor) holds at most 10,000,
    the oldest going first; past that the voice is still found."""
    from zeroconf import DNSOutgoing, DNSText, RecordUpdateListener, const

    port = free_port()
    config = parse_config(
        {"device": {"name": "flooded"}, "wyoming": {"host": "127.0.0.1", "port": port}}
    )
    advert = await advertise(config)
    assert advert is not None
    zc = advert.zeroconf.zeroconf
    cache = zc.cache
    sent = 11_000

    def name(n: int) -> str:
        return f"made-up-{n:05d}._hap._tcp.local."

    last_in = asyncio.Event()

    class LastIn(RecordUpdateListener):  # told of each record once it is in the cache
        def async_update_records(self, zc: object, now: float, records: list[Any]) -> None:
            if any(r.new.name == name(sent - 1) for r in records):
                last_in.set()

    zc.async_add_listener(LastIn(), None)

    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    try:
        for first in range(0, sent, 10):
            out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
            for n in range(first, first + 10):
                text = DNSText(name(n), const._TYPE_TXT, const._CLASS_IN, 4500, b"\x04id=1")
                out.add_answer_at_time(text, 0)
            for packet in out.packets():
                flood.sendto(packet, ("224.0.0.251", 5353))
            await asyncio.sleep(0)  # the advertiser, in this loop, reads it before the next
        async with asyncio.timeout(10):
            await last_in.wait()
        held = sum(len(records) for records in cache.cache.values())
        assert held <= 10_000
        assert cache.async_entries_with_name(name(sent - 100))  # the newest kept,
        assert not cache.async_entries_with_name(name(0))  # the oldest gone
        asker = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            info = AsyncServiceInfo("_wyoming._tcp.local.", "edge-tts-flooded._wyoming._tcp.local.")
            assert await info.async_request(asker.zeroconf, 3000)
            assert info.port == port
        finally:
            await asker.async_close()
    finally:
        flood.close()
        await advert.close()
