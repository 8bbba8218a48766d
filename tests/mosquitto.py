"""A Mosquitto broker of a test's (or a benchmark's) own, on a free port."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A Mosquitto broker of the test's own, on a free port, that can be stopped and restarted."""

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = False,
        acl: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`persistent`: sessions and queued messages survive a restart, as on a Home
        Assistant broker (Mosquitto's persistence, saved when it stops). `acl`: the text of
        an ACL file (Mosquitto's `acl_file`) for every client. `tls`: (certificate, key) for
        a listener that speaks only TLS."""
        self.host = "127.0.0.1"
        self.port = free_port()
        self._conf = workdir / "mosquitto.conf"
        settings = (
            f"persistence true\npersistence_location {workdir}/\n"
            if persistent
            else "persistence false\n"
        )
        if acl is not None:
            (workdir / "acl").write_text(acl)
            settings += f"acl_file {workdir / 'acl'}\n"
        listener = f"listener {self.port} 127.0.0.1\n"
        if tls is not None:
            listener += f"certfile {tls[0]}\nkeyfile {tls[1]}\n"
        self._conf.write_text(
            # Started as root, Mosquitto would switch to its own user and could not save its
            # persistence in the test's private directory: it stays who we are.
            f"user {getpass.getuser()}\n"
            f"{listener}allow_anonymous true\n{settings}"
            "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            "log_type notice\nlog_type information\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._proc = subprocess.Popen([exe, "-c", str(self._conf)], stderr=subprocess.PIPE)
        assert self._proc.stderr is not None
        # Mosquitto says when it listens; wait for that line, not for a guessed time.
        for line in self._proc.stderr:
            if b"running" in line:
                break
        else:
            raise RuntimeError(f"mosquitto did not start (exit {self._proc.wait()})")
        # Keep draining its log so a chatty broker never blocks on a full pipe.
        self._drain = threading.Thread(target=self._proc.stderr.read, daemon=True)
        self._drain.start()

    def stop(self) -> None:
        """Stop it (killed if it takes over 10 s) and close its pipe."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._drain.join(5)  # its end of the pipe is closed: the read has returned
        if proc.stderr is not None:
            proc.stderr.close()
