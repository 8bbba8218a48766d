"""An avahi-daemon of a test's (or a benchmark's) own: the mDNS responder Raspberry Pi OS
runs, on loopback only, reached over a D-Bus bus of its own.

avahi-daemon has one pid file and one runtime directory per machine (/run/avahi-daemon) and
insists that directory belongs to its user. So it runs in a user and mount namespace of its
own (no root needed): /run there is empty, and its user is the namespace's root. It answers
on 127.0.0.1 only (`allow-interfaces=lo`), under a host name of its own, so nothing of a
test's reaches the network, and the machine's own avahi-daemon, if one runs, is left alone.
A process finds it by DBUS_SYSTEM_BUS_ADDRESS=`bus`, as avahi's clients find the system's.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

_AVAHI_CONF = """[server]
host-name=edge-tts-test
use-ipv4=yes
use-ipv6=no
allow-interfaces=lo
enable-dbus=yes
[publish]
publish-workstation=no
publish-hinfo=no
"""


class Avahi:
    """avahi-daemon and its D-Bus bus, started, stopped and restarted by the test."""

    def __init__(self, workdir: Path) -> None:
        self._dir = workdir / "avahi"
        self._dir.mkdir()
        self._socket = self._dir / "bus"
        self.bus = f"unix:path={self._socket}"  # the DBUS_SYSTEM_BUS_ADDRESS to reach it
        (self._dir / "bus.conf").write_text(_BUS_CONF.format(socket=self._socket))
        (self._dir / "avahi.conf").write_text(_AVAHI_CONF)
        # Its user, as avahi-daemon looks it up, is the namespace's root.
        (self._dir / "passwd").write_text("root:x:0:0::/root:/bin/sh\navahi:x:0:0::/:/bin/false\n")
        (self._dir / "group").write_text("root:x:0:\navahi:x:0:\n")
        self._dbus: subprocess.Popen[bytes] | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None
        self.log = bytearray()

    def start(self) -> None:
        """The bus, then avahi-daemon; returns once it has said its start-up is complete."""
        if self._dbus is None:
            exe = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
            self._dbus = subprocess.Popen(
                [exe, f"--config-file={self._dir / 'bus.conf'}", "--nofork", "--print-address"],
                stdout=subprocess.PIPE,
            )
            assert self._dbus.stdout is not None
            if not self._dbus.stdout.readline():  # printed once it listens
                raise RuntimeError(f"dbus-daemon did not start (exit {self._dbus.wait()})")
        avahi = shutil.which("avahi-daemon") or "/usr/sbin/avahi-daemon"
        inside = (
            f"mount -t tmpfs tmpfs /run && mount --bind {self._dir}/passwd /etc/passwd"
            f" && mount --bind {self._dir}/group /etc/group"
            f" && DBUS_SYSTEM_BUS_ADDRESS={self.bus} exec {avahi} --no-drop-root --no-chroot"
            f" --no-rlimits -f {self._dir}/avahi.conf"
        )
        self._daemon = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", inside],
            stderr=subprocess.PIPE,
        )
        assert self._daemon.stderr is not None
        for line in self._daemon.stderr:
            self.log += line
            if b"Server startup complete" in line:
                break
        else:
            raise RuntimeError(
                f"avahi-daemon did not start (exit {self._daemon.wait()}): {self.log.decode()}"
            )
        # Keep reading its log so it never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read, args=(self._daemon,), daemon=True)
        self._drain.start()

    def _read(self, daemon: subprocess.Popen[bytes]) -> None:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            self.log += line

    def stop_daemon(self) -> None:
        """avahi-daemon stops (an upgrade restarting it, say); the bus stays."""
        if self._daemon is None:
            return
        daemon, self._daemon = self._daemon, None
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if self._drain is not None:
            self._drain.join(5)  # its end of the pipe is closed: the read has returned
        assert daemon.stderr is not None
        daemon.stderr.close()

    def stop(self) -> None:
        self.stop_daemon()
        if self._dbus is not None:
            dbus, self._dbus = self._dbus, None
            dbus.terminate()
            dbus.wait(10)
            assert dbus.stdout is not None
            dbus.stdout.close()
