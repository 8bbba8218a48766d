"""Living under systemd: sd_notify readiness, watchdog, status, reload and stop, journal
priorities, the unit file's checks, and the install script into a temporary root."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from edge_tts.config import load_config

from conftest import API_KEY, Broker, Capture, DaemonProcess, Home, split_speech, write_config
from fake_dashscope import FakeDashScope, pcm_for

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-tts.service"
WATCHDOG_S = 2.0  # the daemon pings at half of it


def unit_setting(key: str) -> str:
    """A [Service] setting of the shipped unit: what systemd will hold the daemon to."""
    return next(
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    )


class NotifySocket:
    """The socket systemd listens on for sd_notify, as a test reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    async def next(self, timeout: float = 15) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            data = await loop.sock_recv(self.sock, 4096)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((loop.time(), fields))
        return fields

    async def until(self, key: str, timeout: float = 15) -> dict[str, str]:
        """Read messages until one carries `key`; returns it."""
        async with asyncio.timeout(timeout):
            while True:
                fields = await self.next(timeout)
                if key in fields:
                    return fields

    def seen(self, key: str) -> list[float]:
        return [t for t, fields in self.messages if key in fields]


@pytest.fixture
def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    # AF_UNIX paths are short; the test's own directory may be too deep.
    short = Path(f"/tmp/edge-tts-notify-{os.getpid()}-{id(tmp_path)}")
    ns = NotifySocket(short)
    yield ns  # type: ignore[misc]
    ns.sock.close()
    short.unlink(missing_ok=True)


def notified_env(notify: NotifySocket) -> dict[str, str]:
    return dict(
        os.environ,
        DASHSCOPE_API_KEY=API_KEY,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)),
    )


async def test_ready_without_the_broker_saying_so_then_online_when_it_comes(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, notify: NotifySocket, home: Home
) -> None:
    config = write_config(tmp_path / "config.yaml", broker, dashscope)
    broker.stop()
    daemon = DaemonProcess(config, notified_env(notify))
    await daemon.spawn()
    try:
        await _ready_then_watchdog_then_stop(daemon, broker, notify)
    finally:
        if daemon.running:  # a failure above must not leave the daemon running
            await daemon.kill()
    assert API_KEY.encode() not in daemon.stderr


async def _ready_then_watchdog_then_stop(
    daemon: DaemonProcess, broker: Broker, notify: NotifySocket
) -> None:
    # No broker (a newcomer's mqtt.host not set yet, Home Assistant's machine down): ready
    # all the same, so that systemd starts it, and the status says what it waits for...
    ready = await notify.until("READY")
    where = f"waiting for the broker at {broker.host}:{broker.port}"
    assert ready["STATUS"].startswith(where), ready["STATUS"]
    # ...and, once it has tried, why it cannot reach it.
    status = ready
    while not status["STATUS"].startswith(f"{where} ("):
        status = await notify.until("STATUS")
    assert "refused" in status["STATUS"].lower(), status["STATUS"]
    broker.start()
    while not status["STATUS"].startswith("idle; "):
        status = await notify.until("STATUS", timeout=40)
    assert re.match(
        r"idle; (warm connection|no cloud connection); cache 0 MB, 0 entries; "
        r"0 announcements today$",
        status["STATUS"],
    ), status["STATUS"]

    # It is ready: the broker knows it is online (the fresh Home client sees the retained
    # message), and an announcement is spoken.
    async with _home(broker) as ha:
        await ha.log.wait_for(lambda: ha.log.availability[-1:] == ["online"])
        await ha.say({"text": "Ready and listening.", "id": "r"})
        assert (await ha.log.outcome("r"))["event"] == "finished"
        status = await notify.until("STATUS")
        while "1 announcements today" not in status["STATUS"]:
            status = await notify.until("STATUS")

        # The watchdog keeps coming, well inside its interval.
        pings_before = len(notify.seen("WATCHDOG"))
        while len(notify.seen("WATCHDOG")) < pings_before + 4:
            await notify.until("WATCHDOG")
        pings = notify.seen("WATCHDOG")[-4:]
        assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_S

        loop = asyncio.get_running_loop()
        asked = loop.time()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert (await notify.until("STOPPING"))["STOPPING"] == "1"
        code = await daemon.stop()
        assert code == 0
        # Stopped before systemd would have killed it (the unit's TimeoutStopSec).
        assert loop.time() - asked < float(unit_setting("TimeoutStopSec"))
        await ha.log.wait_for(lambda: ha.log.availability[-1:] == ["offline"])


async def test_run_as_the_service_runs_it_with_no_home_and_a_user_without_a_name(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    capture: Capture,
    notify: NotifySocket,
) -> None:
    """DynamicUser=yes on a Debian without libnss-systemd: no HOME, and a uid the password
    database does not know (a user namespace maps this one to 54321). Every path comes from
    systemd's directories, with the shipped cache default (`cache.dir: null`): it is ready,
    speaks, and keeps its queue and cache where systemd said, without a warning."""
    config = write_config(tmp_path / "config.yaml", broker, dashscope, cache__dir=None)
    state, cache = tmp_path / "var-lib", tmp_path / "var-cache"
    env = {k: v for k, v in notified_env(notify).items() if k != "HOME" and "XDG" not in k}
    env |= {"STATE_DIRECTORY": str(state), "CACHE_DIRECTORY": str(cache)}
    unnamed = ["unshare", "--user", "--map-user=54321", "--map-group=54321"]
    daemon = DaemonProcess(config, env, wrap=unnamed)
    await daemon.start(home)
    try:
        assert (await notify.until("READY"))["READY"] == "1"
        await home.say({"text": "Nobody's home.", "id": "nobody"})
        assert (await home.log.outcome("nobody"))["event"] == "finished"
        assert split_speech(capture.read())[1] == pcm_for("Nobody's home.")
    finally:
        await daemon.stop()
    assert (state / "queue-kitchen.jsonl").exists() and (state / "usage-kitchen.json").exists()
    assert list(cache.glob("??/*.pcm"))
    assert b"WARNING" not in daemon.stderr and b"Traceback" not in daemon.stderr, daemon.stderr


def _home(broker: Broker):  # type: ignore[no-untyped-def]
    from conftest import home_assistant

    return home_assistant(broker, identifier="ha-systemd")


@pytest.fixture
async def notified_daemon(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    capture: Capture,
    notify: NotifySocket,
) -> AsyncIterator[DaemonProcess]:
    config = write_config(tmp_path / "config.yaml", broker, dashscope)
    proc = DaemonProcess(config, notified_env(notify))
    await proc.start(home)
    await notify.until("READY")
    yield proc
    await proc.stop()


def sighup(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)


async def test_sighup_applies_a_new_config_without_dropping_the_queue(
    notified_daemon: DaemonProcess,
    home: Home,
    notify: NotifySocket,
    capture: Capture,
    dashscope: FakeDashScope,
) -> None:
    dashscope.chunk_interval_s = 0.05  # the first announcement is still playing at the reload
    await home.say({"text": "The first announcement, still playing.", "id": "one"})
    await home.say({"text": "The second one, queued.", "id": "two"})
    await home.log.event("one", "started")

    raw = yaml.safe_load(notified_daemon.config.read_text())
    raw["voices"]["calm"] = {
        "engine": "cosyvoice",
        "model": "cosyvoice-v3-flash",
        "voice": "longanran",
    }
    notified_daemon.config.write_text(yaml.safe_dump(raw))
    sighup(notified_daemon)
    assert (await notify.until("RELOADING"))["RELOADING"] == "1"
    assert "reload refused" not in (await notify.until("READY"))["STATUS"]

    assert (await home.log.outcome("one"))["event"] == "finished"
    assert (await home.log.outcome("two"))["event"] == "finished"
    await home.say({"text": "A new voice.", "id": "three", "voice": "calm"})
    assert (await home.log.outcome("three"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("A new voice.", voice="longanran")


async def test_sighup_with_a_broken_config_keeps_the_running_one(
    notified_daemon: DaemonProcess,
    home: Home,
    notify: NotifySocket,
    capture: Capture,
) -> None:
    good = notified_daemon.config.read_text()
    notified_daemon.config.write_text(re.sub(r"port: \d+", "port: 99999", good, count=1))
    sighup(notified_daemon)
    await notify.until("RELOADING")
    status = (await notify.until("READY"))["STATUS"]
    assert "reload refused: mqtt.port: must be an integer 1-65535" in status

    await home.say({"text": "Still speaking.", "id": "s"})
    assert (await home.log.outcome("s"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("Still speaking.")
    await notified_daemon.stop()
    assert (
        b"reload refused, the running configuration stays: mqtt.port: must be an integer 1-65535"
    ) in notified_daemon.stderr


async def test_log_lines_carry_journal_priorities_when_stderr_is_the_journal(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "journal-stream"
    with log_file.open("wb") as stream:
        st = os.fstat(stream.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        config = tmp_path / "c.yaml"
        config.write_text("mqtt: {port: 1}\ndashscope: {inference_url: 'ws://127.0.0.1:1/x'}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_tts",
            "say",
            "-c",
            str(config),
            "-o",
            str(tmp_path / "x.wav"),
            "Hello.",
            env=env,
            stderr=stream,
        )
        await proc.wait()
    lines = log_file.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines[:-1]), lines
    assert any(line.startswith("<4>") for line in lines)  # the warning about the missing key


# --- the unit file -------------------------------------------------------------------------


def test_the_unit_is_rated_ok_by_systemd_analyze_security() -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Overall exposure level for edge-tts.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 2.5


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's edge-tts.
    exe = shutil.which("edge-tts", path=str(Path(sys.executable).parent))
    assert exe
    unit = tmp_path / "edge-tts.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-tts/venv/bin/edge-tts", exe))
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (run.stdout + run.stderr).splitlines() if "edge-tts" in line]
    assert run.returncode == 0 and not problems, run.stdout + run.stderr


def test_the_unit_has_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/opt/edge-tts/venv/bin/edge-tts check --config-only -c "
        "/etc/edge-tts/config.yaml\nExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "SupplementaryGroups=audio",
        "CacheDirectory=edge-tts",
        "LoadCredential=dashscope-api-key:",
        "DeviceAllow=char-alsa rw",
        "DevicePolicy=closed",
        "ProtectSystem=strict",
        "ExecStart=/opt/edge-tts/venv/bin/edge-tts serve -c /etc/edge-tts/config.yaml",
    ):
        assert line in text, line


# --- install -------------------------------------------------------------------------------


def test_install_into_a_root_then_upgrade_then_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # The offline voice's 60 MB model is not what this test is about.
    env = dict(os.environ, PYTHON=sys.executable, EDGE_TTS_EXTRAS="")
    # An install from before releases had its venv right there: it is replaced by a link.
    (root / "opt/edge-tts/venv/bin").mkdir(parents=True)
    subprocess.run(
        [str(ROOT / "scripts" / "install"), "--root", str(root)],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert (root / "etc/systemd/system/edge-tts.service").read_text() == UNIT.read_text()
    config = root / "etc/edge-tts/config.yaml"
    loaded = load_config(str(config))
    assert loaded.device.name == subprocess.run(
        ["hostname", "-s"], capture_output=True, text=True
    ).stdout.strip().replace(".", "-")
    key = root / "etc/edge-tts/dashscope-api-key"
    assert key.read_text() == "" and (key.stat().st_mode & 0o777) == 0o600
    exe = root / "opt/edge-tts/venv/bin/edge-tts"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("edge-tts ")
    # The unit's path is a link to a release of its own, which an upgrade replaces whole.
    first = (root / "opt/edge-tts/venv").readlink()
    assert first.name.startswith("venv-") and not first.is_absolute()

    # An upgrade keeps what the user wrote.
    config.write_text(config.read_text().replace("host: localhost", "host: homeassistant.local"))
    key.write_text("sk-user-key")
    subprocess.run(
        [str(ROOT / "scripts" / "install"), "--root", str(root)],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert "host: homeassistant.local" in config.read_text()
    assert key.read_text() == "sk-user-key"
    second = (root / "opt/edge-tts/venv").readlink()
    assert second != first and [p.name for p in (root / "opt/edge-tts").glob("venv-*")] == [
        second.name
    ]  # the release before is gone

    subprocess.run(
        [str(ROOT / "scripts" / "uninstall"), "--root", str(root)], check=True, capture_output=True
    )
    assert not (root / "opt/edge-tts").exists()
    assert not (root / "etc/systemd/system/edge-tts.service").exists()
    assert config.exists()  # the user's config stays...
    subprocess.run(
        [str(ROOT / "scripts" / "uninstall"), "--root", str(root), "--purge"],
        check=True,
        capture_output=True,
    )
    assert not (root / "etc/edge-tts").exists()  # ...unless purged


def test_install_says_what_to_do_where_it_cannot_install_a_service(tmp_path: Path) -> None:
    """No systemd running the machine (a container, WSL): nothing is installed, and the
    message says how to run edge-tts instead. Without root: how to run it as root."""
    env = dict(os.environ, EDGE_TTS_SYSTEMD_RUN=str(tmp_path / "no-systemd"))
    run = subprocess.run(
        [str(ROOT / "scripts" / "install")], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    if os.getuid() == 0:
        assert "systemd is not running here" in run.stderr
        assert "scripts/run" in run.stderr and "--no-start" in run.stderr
    else:
        assert "run as root" in run.stderr
    assert not Path("/opt/edge-tts/venv/bin/edge-tts").exists() or run.stdout == ""


def test_uninstall_with_nothing_installed_says_so_and_succeeds(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "uninstall"), "--root", str(tmp_path), "--purge"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "edge-tts is not installed" in run.stdout


async def test_a_supervisor_that_never_reads_notifications_does_not_block_the_daemon(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    capture: Capture,
    notify: NotifySocket,
) -> None:
    """Nobody reads the notify socket: after a few watchdog pings its queue is full. The
    daemon drops notifications (saying so once) and still speaks and stops on SIGTERM."""
    config = write_config(tmp_path / "config.yaml", broker, dashscope)
    env = dict(notified_env(notify), WATCHDOG_USEC="20000")  # a ping every 10 ms
    daemon = DaemonProcess(config, env)
    await daemon.start(home)
    try:
        queue_full = "systemd is not reading notifications"
        async with asyncio.timeout(30):
            while queue_full.encode() not in daemon.stderr:
                await home.say({"text": "Are you there?", "id": "probe"})
                await home.log.outcome("probe")
                home.log.events.clear()
        await home.say({"text": "Still speaking.", "id": "after"})
        assert (await home.log.outcome("after"))["event"] == "finished"
        assert await daemon.stop(stop_timeout=10) == 0  # before: blocked for good on a send
        assert daemon.stderr.count(queue_full.encode()) == 1
    finally:
        if daemon.running:
            await daemon.kill()


async def test_stopped_while_starting_its_session_it_still_says_offline(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home
) -> None:
    """SIGTERM while the daemon is still publishing its session's retained messages
    (discovery, then `online`): a clean disconnect sends no last will, so the daemon must
    say `offline` itself from anywhere in the session. Five times, as the moment varies."""
    config = write_config(
        tmp_path / "config.yaml", broker, dashscope, mqtt__discovery_prefix="homeassistant"
    )
    env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY)
    import aiomqtt

    for round_ in range(5):
        offline = home.log.availability.count("offline")
        daemon = DaemonProcess(config, env)
        async with aiomqtt.Client(broker.host, broker.port, identifier=f"probe-{round_}") as probe:
            await probe.subscribe("homeassistant/#", qos=0)
            await daemon.spawn()
            try:
                async with asyncio.timeout(20):
                    async for message in probe.messages:
                        if not message.retain:  # this run's own, not the broker's copy
                            break
                assert daemon.proc is not None
                daemon.proc.terminate()  # mid-session start
                await home.log.wait_for(
                    lambda n=offline: home.log.availability.count("offline") > n, timeout=10
                )
            finally:
                if daemon.running:
                    await daemon.stop()
