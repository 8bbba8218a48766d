"""Home Assistant finds the voice by itself: the Wyoming server advertised as
`_wyoming._tcp` over mDNS, by the machine's avahi-daemon where one runs (Raspberry Pi OS),
else by zeroconf in the daemon. Seen as Home Assistant sees it: a zeroconf browser on the
network (here loopback), which then asks the advertised address for `describe`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge_tts import advertise as advertising
from edge_tts.advertise import advertise
from edge_tts.config import parse_config

from avahi import Avahi
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


def children(pid: int) -> dict[int, str]:
    """The process's children and their command lines."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
    return {pid: cmd.decode() for pid, cmd in found.items()}


def mapped(pid: int) -> str:
    """The files the process has mapped (its /proc maps)."""
    return Path(f"/proc/{pid}/maps").read_text()


def gone(pid: int) -> bool:
    """Ended (a zombie not yet reaped by its new parent counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def advertised_by_avahi(serve: Callable[..., Awaitable[Served]], home: Home) -> Served:
    """The daemon listening on every address (the default), advertised by avahi-daemon."""
    served = await serve(wyoming={"host": "0.0.0.0", "zeroconf": True})
    await home.log.wait_for(
        lambda: any((s.get("wyoming") or {}).get("advertised") for s in home.log.stats)
    )
    advertised = [(s.get("wyoming") or {}).get("advertised") for s in home.log.stats]
    assert "avahi" in advertised and "zeroconf" not in advertised, advertised
    return served


async def test_where_avahi_daemon_runs_it_advertises_the_voice_and_the_daemon_keeps_no_mdns(
    serve: Callable[..., Awaitable[Served]], home: Home, avahi: Avahi
) -> None:
    """Raspberry Pi OS runs avahi-daemon: it answers for the voice, under the machine's host
    name, and the daemon holds no mDNS stack of its own (zeroconf's 3.7 MiB)."""
    async with browsing() as browser:
        served = await advertised_by_avahi(serve, home)
        await browser.until(ServiceStateChange.Added, KITCHEN)
        info = await browser.info(KITCHEN)
        assert info.port == served.port
        assert info.server == "edge-tts-test.local."  # avahi's host name (tests/avahi.py)
        # Home Assistant takes the first address, IPv4 first (avahi adds lo's ::1 too).
        assert info.parsed_addresses()[0] == "127.0.0.1"
    # What Home Assistant does next: describe, at the address and port advertised.
    async with AsyncTcpClient(info.parsed_addresses()[0], info.port) as client:
        await client.write_event(Describe().event())
        while (event := await client.read_event()) is not None and not Info.is_type(event.type):
            pass
    assert event is not None and Info.from_event(event).tts[0].name == "edge-tts"
    assert served.daemon.proc is not None
    pid = served.daemon.proc.pid
    assert "/zeroconf/" not in mapped(pid)  # never imported
    assert [c for c in children(pid).values() if "avahi-publish" in c], children(pid)
    await served.daemon.logged(
        "wyoming: advertised as edge-tts-kitchen by avahi-daemon (every address of this machine)"
    )


@pytest.mark.parametrize("end", ["stop", "kill"])
async def test_a_daemon_that_ends_leaves_no_advertisement_behind(
    serve: Callable[..., Awaitable[Served]], home: Home, avahi: Avahi, end: str
) -> None:
    """Stopped, or killed (a crash, the OOM killer): avahi-publish ends with it, so Home
    Assistant is never shown a voice that is not there."""
    async with browsing() as browser:
        served = await advertised_by_avahi(serve, home)
        await browser.until(ServiceStateChange.Added, KITCHEN)
        assert served.daemon.proc is not None
        (publisher,) = [
            pid for pid, cmd in children(served.daemon.proc.pid).items() if "avahi-publish" in cmd
        ]
        if end == "stop":
            assert await served.daemon.stop() == 0
        else:
            await served.daemon.kill()
        await browser.until(ServiceStateChange.Removed, KITCHEN)  # avahi's goodbye
    assert gone(publisher)


async def test_when_avahi_daemon_restarts_the_voice_is_advertised_again(
    serve: Callable[..., Awaitable[Served]], home: Home, avahi: Avahi
) -> None:
    """An upgrade restarts avahi-daemon, which forgets every service: the daemon notices its
    avahi-publish end and asks again, with backoff, until avahi takes it."""
    async with browsing() as browser:
        served = await advertised_by_avahi(serve, home)
        await browser.until(ServiceStateChange.Added, KITCHEN)
        avahi.stop_daemon()
        await browser.until(ServiceStateChange.Removed, KITCHEN)
        await served.daemon.logged(  # why, in avahi's words, and where to look
            "wyoming: avahi-publish ended (Client failure, exiting: Daemon connection "
            "failed); advertising again in 1 s (is avahi-daemon running? systemctl status "
            "avahi-daemon)"
        )
        # The stats tell the truth meanwhile: not advertised.
        await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["advertised"] is None)
        avahi.start()
        await browser.until(ServiceStateChange.Added, KITCHEN, timeout=30)
        assert (await browser.info(KITCHEN)).port == served.port
        await home.log.wait_for(lambda: home.log.stats[-1]["wyoming"]["advertised"] == "avahi")


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


async def test_without_avahi_daemon_zeroconf_advertises_in_the_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine without avahi-daemon (here: the tests' D-Bus address leads nowhere) still
    has the voice found: zeroconf advertises it, and the log says why."""
    monkeypatch.setattr(advertising, "_local_addresses", lambda: ["127.0.0.1"])
    caplog.set_level(logging.INFO, "edge_tts.advertise")
    await found_in_process("0.0.0.0")
    assert (
        "avahi-daemon did not take the advertisement (Failed to create client object: "
        "Daemon not running); zeroconf advertises" in caplog.text
    )


async def test_a_server_on_one_address_is_advertised_on_that_address_even_beside_avahi(
    avahi: Avahi,
) -> None:
    """avahi would name every address of the machine; Home Assistant might pick one the
    server does not listen on. So one address is advertised by zeroconf, on that address."""
    assert (await found_in_process("127.0.0.1")).parsed_addresses() == ["127.0.0.1"]


async def test_without_avahi_daemon_the_daemon_advertises_the_voice_itself(
    serve: Callable[..., Awaitable[Served]], home: Home
) -> None:
    """What Home Assistant's zeroconf discovery sees: `_wyoming._tcp` with our port, from the
    daemon's own responder (no avahi-daemon answers here)."""
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
    assert isinstance(advert, advertising._InProcess)
    zc = advert._zeroconf.zeroconf
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


def silent_avahi_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for avahi-publish, first on PATH, that says nothing (avahi still probing);
    its pid can be read from the FIFO returned, once it runs."""
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    stand_in = tmp_path / "bin" / "avahi-publish"
    stand_in.parent.mkdir()
    stand_in.write_text(f"#!/bin/sh\necho $$ > {fifo}\nexec sleep 60\n")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}:{os.environ['PATH']}")
    return fifo


async def test_a_server_stopped_while_avahi_is_still_probing_leaves_no_avahi_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped (a reload, a shutdown) before avahi-publish has said a word: it is ended
    too, not left advertising. avahi that slow cannot be made here: a stand-in on PATH
    that says its pid and nothing else."""
    fifo = silent_avahi_publish(tmp_path, monkeypatch)
    config = parse_config(
        {"device": {"name": "kitchen"}, "wyoming": {"host": "0.0.0.0", "port": free_port()}}
    )
    advertising_task = asyncio.create_task(advertise(config))
    pid = int(await asyncio.to_thread(fifo.read_text))  # opened: it runs, silent
    advertising_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await advertising_task
    assert gone(pid)


async def test_avahi_still_probing_after_its_time_is_kept_and_ended_with_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """avahi has said nothing by the time allowed (a slow machine, a clash being resolved):
    it is kept, not taken for a failure (zeroconf would advertise the voice a second time),
    and ended when the server stops. The same silent stand-in; the time allowed cut short."""
    fifo = silent_avahi_publish(tmp_path, monkeypatch)
    monkeypatch.setattr(advertising, "_FIRST_WORD_S", 0.5)
    config = parse_config(
        {"device": {"name": "kitchen"}, "wyoming": {"host": "0.0.0.0", "port": free_port()}}
    )
    advertising_task = asyncio.create_task(advertise(config))
    pid = int(await asyncio.to_thread(fifo.read_text))
    advert = await advertising_task
    assert advert is not None and advert.how == "avahi"
    assert not gone(pid)
    await advert.close()
    assert gone(pid)
