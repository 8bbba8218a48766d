"""Where Home Assistant finds the Wyoming server: `_wyoming._tcp` advertised over mDNS.

Home Assistant browses for `_wyoming._tcp` and offers each server it finds under
Discovered. The advertisement is made one of two ways, chosen when the server starts:

- By the machine's own mDNS responder, avahi-daemon (Raspberry Pi OS runs it, and most
  Debian machines with a desktop), through its `avahi-publish` tool (avahi-utils): a child
  process kept for as long as the server listens. avahi answers for the machine already, so
  the daemon holds no mDNS stack of its own (zeroconf's is 3.7 MiB resident, and it keeps
  whatever the network's peers announce) and reads no mDNS packet from the network.
  avahi names the machine's host and all its addresses, so this way is taken when the server
  listens on all of them (`wyoming.host: 0.0.0.0`, the default). When avahi-daemon restarts
  (an upgrade), the child ends; it is started again, with backoff, until it is taken.
- In this process, by `zeroconf`: where no avahi-daemon answers (none installed, no D-Bus,
  avahi-utils missing) or the server listens on one address, the one then advertised.

A network without multicast, a sandbox, a name clash: discovery only is lost, never the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from typing import Any, Protocol

from .backoff import Backoff
from .config import Config

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp"
_ANY_ADDRESS = ("0.0.0.0", "::", "")
_ESTABLISHED = re.compile(r"Established under name '(.*)'")
# avahi probes a name three times, 250 ms apart, before it is established; a daemon that
# has said nothing by then is still at it (a slow machine, a clash being resolved).
_FIRST_WORD_S = 10.0
_END_S = 2.0  # avahi-publish withdraws and exits at once on SIGTERM


class Advertisement(Protocol):
    """The server advertised, until closed."""

    how: str  # "avahi" or "zeroconf": published in the stats

    async def close(self) -> None: ...


async def advertise(
    config: Config, changed: Callable[[str | None], None] = lambda how: None
) -> Advertisement | None:
    """Advertise the Wyoming server for Home Assistant to find; None if it cannot be.
    `changed` is told when the advertisement goes (None) and comes back (its `how`)."""
    w = config.wyoming
    name = f"edge-tts-{config.device.name}"
    if w.host in _ANY_ADDRESS:
        avahi = await _Avahi.start(name, w.port, changed)
        if avahi is not None:
            return avahi
    return await _in_process(config, name)


# --- by avahi-daemon ----------------------------------------------------------------------


def avahi_command(name: str, port: int) -> list[str] | None:
    """The command that keeps `name` published while it runs; None without avahi-publish.
    Under setpriv it ends with this process, however this one ends (a SIGKILL included), so
    a daemon that is gone is never advertised by an orphan."""
    publish = shutil.which("avahi-publish")
    if publish is None:
        return None
    command = [publish, "--service", name, SERVICE_TYPE, str(port)]
    setpriv = shutil.which("setpriv")  # util-linux: on every Debian and Raspberry Pi OS
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command


class _Avahi:
    """avahi-publish, kept running (its own task) until closed."""

    how = "avahi"

    def __init__(
        self,
        command: list[str],
        child: asyncio.subprocess.Process,
        changed: Callable[[str | None], None],
    ) -> None:
        self._command = command
        self._child = child
        self._changed = changed
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, name: str, port: int, changed: Callable[[str | None], None]
    ) -> _Avahi | None:
        command = avahi_command(name, port)
        if command is None:
            log.debug("wyoming: avahi-publish is not installed; zeroconf advertises")
            return None
        try:
            child = await _spawn(command)
        except OSError as exc:
            log.info("wyoming: avahi-publish did not start (%s); zeroconf advertises", exc)
            return None
        said: list[str] = []
        line: str | None = ""
        try:
            async with asyncio.timeout(_FIRST_WORD_S):
                while (line := await _read_line(child)) is not None:
                    if _ESTABLISHED.fullmatch(line):
                        break
                    said.append(line)
        except TimeoutError:
            line = ""
            log.info("wyoming: advertised as %s by avahi-daemon (still probing)", name)
        except asyncio.CancelledError:  # the server stopped meanwhile: the child with it
            await _end(child)
            raise
        if line is None:  # it ended: no avahi-daemon, no D-Bus, a refusal
            why = said[-1] if said else await _last_words(child)
            await _end(child)
            log.info(
                "wyoming: avahi-daemon did not take the advertisement (%s); zeroconf advertises",
                why,
            )
            return None
        kept = cls(command, child, changed)
        for heard in [*said, line]:
            if heard:
                kept._heard(heard)
        kept._task = asyncio.get_running_loop().create_task(kept._keep(), name="avahi-publish")
        return kept

    def _heard(self, line: str) -> bool:
        """Log what avahi-publish said; True if the name is now published."""
        if established := _ESTABLISHED.fullmatch(line):
            log.info(
                "wyoming: advertised as %s by avahi-daemon (every address of this machine)",
                established[1],
            )
            return True
        log.info("wyoming: avahi-publish: %s", line)  # a clash and the new name, say
        return False

    async def _keep(self) -> None:
        """Start avahi-publish again whenever it ends: avahi-daemon restarted or went."""
        backoff = Backoff(start=1.0, cap=60.0)
        while True:
            last = ""
            while (line := await _read_line(self._child)) is not None:
                last = line
                if self._heard(line):
                    backoff.reset()
                    self._changed(self.how)
            self._changed(None)
            why = await _last_words(self._child)  # its code: 0 even on a client failure
            delay = backoff.next()
            log.warning(
                "wyoming: avahi-publish ended (%s); advertising again in %.0f s "
                "(is avahi-daemon running? systemctl status avahi-daemon)",
                last or why,
                delay,
            )
            await asyncio.sleep(delay)
            with contextlib.suppress(OSError):  # gone for now: it is tried again
                self._child = await _spawn(self._command)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await _end(self._child)


async def _spawn(command: list[str]) -> asyncio.subprocess.Process:
    # LC_ALL=C: its messages in English, the ones read here, whatever the user's language.
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, LC_ALL="C"),
    )


async def _read_line(child: asyncio.subprocess.Process) -> str | None:
    """Its next line on stderr (None once it has closed it: it ended)."""
    assert child.stderr is not None
    try:
        line = await child.stderr.readline()
    except ValueError:  # a line past the reader's limit: not avahi-publish's
        return "(a line too long)"
    return line.decode(errors="replace").strip() if line else None


async def _last_words(child: asyncio.subprocess.Process) -> str:
    code = await child.wait()
    return f"exit code {code}" if code >= 0 else f"signal {-code}"


async def _end(child: asyncio.subprocess.Process) -> None:
    """SIGTERM: avahi-publish withdraws the name (avahi says goodbye on the network)."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        try:
            async with asyncio.timeout(_END_S):
                await child.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


# --- in this process, by zeroconf ---------------------------------------------------------


class _InProcess:
    how = "zeroconf"

    def __init__(self, zeroconf: Any, service: Any) -> None:
        self._zeroconf, self._service = zeroconf, service

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._zeroconf.async_unregister_service(self._service)
        await self._zeroconf.async_close()


async def _in_process(config: Config, name: str) -> _InProcess | None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    w = config.wyoming
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
    return _InProcess(zeroconf, service)


def _local_addresses() -> list[str]:
    """The address this machine reaches the local network from (the interface multicast
    goes out on), found without sending anything; loopback when there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("224.0.0.251", 5353))  # mDNS: UDP connect only picks a route
            return [str(probe.getsockname()[0])]
        except OSError:
            return ["127.0.0.1"]
