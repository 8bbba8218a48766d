"""Where Home Assistant finds the Wyoming server: `_wyoming._tcp` advertised over mDNS by
zeroconf in this process, as wyoming-piper and linux-voice-assistant do.

Home Assistant browses for `_wyoming._tcp` and offers each server it finds under
Discovered. The advertisement names the address the server listens on, or, when it listens
on every address, the one this machine reaches the local network from. A network without
multicast, a sandbox, a name clash: discovery only is lost, never the server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from .config import Config

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp"
_ANY_ADDRESS = ("0.0.0.0", "::", "")


class Advertisement:
    """The server advertised, until closed."""

    how = "zeroconf"  # published in the stats (wyoming.advertised)

    def __init__(self, zeroconf: Any, service: Any) -> None:
        self.zeroconf = zeroconf  # the responder (an AsyncZeroconf), answering for the server
        self._service = service

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.zeroconf.async_unregister_service(self._service)
        await self.zeroconf.async_close()


async def advertise(config: Config) -> Advertisement | None:
    """Advertise the Wyoming server for Home Assistant to find; None if it cannot be."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    w = config.wyoming
    name = f"edge-tts-{config.device.name}"
    addresses = [w.host] if w.host not in _ANY_ADDRESS else _local_addresses()
    service = AsyncServiceInfo(
        f"{SERVICE_TYPE}.local.",
        f"{name}.{SERVICE_TYPE}.local.",
        addresses=[socket.inet_aton(a) for a in addresses],
        port=w.port,
        server=f"{name}.local.",
    )
    try:
        # On the addresses advertised only: zeroconf then needs no list of the machine's
        # interfaces (a netlink socket, which a sandboxed service may not open).
        zeroconf = AsyncZeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
    except Exception as exc:  # no multicast here, a sandbox: discovery only is lost
        log.warning("wyoming: not advertised by zeroconf: %s", exc)
        return None
    try:
        await zeroconf.async_register_service(service)
    except Exception as exc:  # no multicast route, a name clash: discovery only is lost
        log.warning("wyoming: not advertised by zeroconf: %s", exc)
        await zeroconf.async_close()
        return None
    log.info("wyoming: advertised as %s on %s", name, ", ".join(addresses))
    return Advertisement(zeroconf, service)


def _local_addresses() -> list[str]:
    """The address this machine reaches the local network from (the interface multicast
    goes out on), found without sending anything; loopback when there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("224.0.0.251", 5353))  # mDNS: UDP connect only picks a route
            return [str(probe.getsockname()[0])]
        except OSError:
            return ["127.0.0.1"]
