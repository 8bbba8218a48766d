"""Logging to the journal: a real systemd-journald, started for the test in a mount namespace
of its own (no root needed) where the journal's sockets are, receives the daemon's log lines
over its native protocol with their priority and fields, read back with journalctl. A
journal that does not read never blocks the daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_tts.systemd import JournalHandler

from conftest import API_KEY, Broker, Capture, DaemonProcess, Home, write_config
from fake_dashscope import FakeDashScope

JOURNALD = "/lib/systemd/systemd-journald"


def in_a_journal(directory: Path) -> list[str]:
    """A command prefix: what follows runs where a journald of its own listens on the
    journal's sockets (/run/systemd/journal, over a tmpfs /run), keeping its files in
    directory/journal, its pid in directory/journald.pid; and its stderr is a journal stream
    as far as it can tell ($JOURNAL_STREAM names it, as systemd sets it)."""
    script = (
        'mkdir -p "$0/journal" && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log'
        " && mkdir -p /run/systemd/journal /run/log/journal"
        ' && mount --bind "$0/journal" /run/log/journal'
        f' && {{ {JOURNALD} 2>"$0/journald.log" & echo $! >"$0/journald.pid"; }}'
        " && until [ -S /run/systemd/journal/socket ]; do sleep 0.01; done"
        " && export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)"
        ' && exec "$@"'
    )
    return ["unshare", "-rm", "--propagation", "private", "sh", "-c", script, str(directory)]


def entries(directory: Path) -> list[dict[str, Any]]:
    """What the journal holds, every field whole (--all: long ones too)."""
    out = subprocess.run(
        ["journalctl", "-D", str(directory / "journal"), "-o", "json", "--all", "--no-pager"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def stop_journald(directory: Path) -> None:
    pid = directory / "journald.pid"
    if pid.exists():
        os.kill(int(pid.read_text()), signal.SIGTERM)


async def test_the_daemons_log_lines_reach_the_journal_with_priority_and_fields(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, home: Home, capture: Capture
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    env = dict(os.environ, DASHSCOPE_API_KEY=API_KEY)
    daemon = DaemonProcess(config, env, wrap=in_a_journal(tmp_path))
    try:
        await daemon.start(home)
        await home.say({"text": "Into the journal.", "id": "j-1"})
        assert (await home.log.outcome("j-1"))["event"] == "finished"
        await home.say({"text": "[fail] Not this one.", "id": "j-2"})
        assert (await home.log.outcome("j-2"))["event"] == "failed"
        assert daemon.proc is not None
        # Everything sent before this is in the journal's files once it returns.
        sync = ["nsenter", "-t", str(daemon.proc.pid), "-U", "-m", "--preserve-credentials"]
        await asyncio.to_thread(subprocess.run, [*sync, "journalctl", "--sync"], check=True)
        journal = entries(tmp_path)
    finally:
        if daemon.running:
            await daemon.stop()
        stop_journald(tmp_path)
    ours = [e for e in journal if e.get("SYSLOG_IDENTIFIER") == "edge-tts"]
    assert ours and all(e["_TRANSPORT"] == "journal" for e in ours)  # native, not the stream
    assert daemon.stderr == b""  # not twice
    spoke = next(e for e in ours if e.get("ANNOUNCEMENT_ID") == "j-1")
    assert spoke["PRIORITY"] == "6" and spoke["SOURCE"] == "cloud"
    assert spoke["MESSAGE"].startswith("edge_tts.speech: announcement j-1: first audio after ")
    assert spoke["LOGGER"] == "edge_tts.speech" and spoke["CODE_FILE"].endswith("speech.py")
    failed = next(e for e in ours if e.get("ANNOUNCEMENT_ID") == "j-2")
    assert failed["PRIORITY"] == "4" and "failed" in failed["MESSAGE"]
    assert API_KEY not in json.dumps(journal)


def test_lines_and_sizes_the_datagram_cannot_hold_arrive_whole(tmp_path: Path) -> None:
    big = "y" * 300_000  # over a datagram's size: sent in a sealed memory file
    program = (
        "import logging, subprocess\n"
        "from edge_tts.systemd import JournalHandler\n"
        "log = logging.getLogger('edge_tts.test')\n"
        "log.addHandler(JournalHandler())\n"
        "log.setLevel(logging.INFO)\n"
        "log.warning('two\\nlines', extra={'ANNOUNCEMENT_ID': 'multi', 'lower_case': 'no'})\n"
        f"log.error('big %s', 'y' * {len(big)}, extra={{'ANNOUNCEMENT_ID': 'big'}})\n"
        "log.info('Küche: 厨房', extra={'ANNOUNCEMENT_ID': 'utf-8'})\n"
        # Text from outside (an announcement's id or words) cannot add or change fields.
        "log.warning('x\\nPRIORITY=0\\nSYSLOG_IDENTIFIER=evil',"
        " extra={'ANNOUNCEMENT_ID': 'in\\nPRIORITY=1', 'PRIORITY': '0',"
        " 'SYSLOG_IDENTIFIER': 'evil'})\n"
        "subprocess.run(['journalctl', '--sync'], check=True)\n"
    )
    try:
        subprocess.run([*in_a_journal(tmp_path), sys.executable, "-c", program], check=True)
        journal = {e["ANNOUNCEMENT_ID"]: e for e in entries(tmp_path) if "ANNOUNCEMENT_ID" in e}
    finally:
        stop_journald(tmp_path)
    assert journal["multi"]["MESSAGE"] == "two\nlines" and journal["multi"]["PRIORITY"] == "4"
    assert "LOWER_CASE" not in journal["multi"] and "lower_case" not in journal["multi"]
    assert journal["big"]["MESSAGE"] == f"big {big}" and journal["big"]["PRIORITY"] == "3"
    assert journal["utf-8"]["MESSAGE"] == "Küche: 厨房"
    injected = journal["in\nPRIORITY=1"]
    assert injected["MESSAGE"] == "x\nPRIORITY=0\nSYSLOG_IDENTIFIER=evil"
    assert injected["PRIORITY"] == "4" and injected["SYSLOG_IDENTIFIER"] == "edge-tts"


def test_a_journal_that_does_not_read_never_blocks_and_is_told_what_was_dropped(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(path)
        journal.setblocking(False)
        handler = JournalHandler(path=path)
        log = logging.getLogger("edge_tts.test.full")
        log.propagate = False
        log.addHandler(handler)
        try:
            sent = 0
            while True:  # until its queue is full: each call returns at once, or this hangs
                log.warning("line %d", sent)
                sent += 1
                if handler._dropped:
                    break
            log.warning("one more, dropped too")
            received = []
            with pytest.raises(BlockingIOError):
                while True:
                    received.append(journal.recv(65536))
            log.warning("the journal reads again")
            notice, line = journal.recv(65536), journal.recv(65536)
            log.warning("and on")
            after = [journal.recv(65536)]
            with pytest.raises(BlockingIOError):
                after.append(journal.recv(65536))  # no second notice
        finally:
            log.removeHandler(handler)
            handler.close()
    assert len(received) == sent - 1
    assert b"MESSAGE=2 earlier log line(s) dropped: the journal was not reading\n" in notice
    assert b"PRIORITY=4\n" in notice
    assert b"MESSAGE=the journal reads again\n" in line
    assert len(after) == 1 and b"MESSAGE=and on\n" in after[0]


def test_each_level_has_its_syslog_priority(tmp_path: Path) -> None:
    path = str(tmp_path / "socket")
    log = logging.getLogger("edge_tts.test.levels")
    log.propagate = False
    log.setLevel(1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(path)
        journal.settimeout(10)
        handler = JournalHandler(path=path)
        log.addHandler(handler)
        try:
            for level in (5, logging.DEBUG, logging.INFO, 25, logging.WARNING, logging.ERROR,
                          logging.CRITICAL):  # fmt: skip
                log.log(level, "level %d", level)
            priorities = [
                next(f for f in journal.recv(65536).split(b"\n") if f.startswith(b"PRIORITY="))
                for _ in range(7)
            ]
        finally:
            log.removeHandler(handler)
            handler.close()
    # Below debug, debug: 7; info and what lies between it and warning: 6; warning 4;
    # error 3; critical 2 (syslog's, which journalctl -p reads).
    assert [p.removeprefix(b"PRIORITY=") for p in priorities] == [
        b"7",
        b"7",
        b"6",
        b"6",
        b"4",
        b"3",
        b"2",
    ]


def test_a_restarted_journal_gets_the_next_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "socket")
    log = logging.getLogger("edge_tts.test.restart")
    log.propagate = False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as first:
        first.bind(path)
        first.settimeout(10)  # a line that never comes fails the test, not hangs it
        handler = JournalHandler(path=path)
        log.addHandler(handler)
        try:
            log.warning("before")
            assert b"MESSAGE=before\n" in first.recv(65536)
            first.close()
            os.unlink(path)
            log.warning("while it restarts")  # nobody there: counted, not raised
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
                second.bind(path)  # journald again, a new socket at the same place
                second.settimeout(10)
                log.warning("after")
                notice, line = second.recv(65536), second.recv(65536)
        finally:
            log.removeHandler(handler)
            handler.close()
    assert b"MESSAGE=1 earlier log line(s) dropped: the journal was not reading\n" in notice
    assert b"MESSAGE=after\n" in line
