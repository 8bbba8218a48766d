"""Nothing accepted is lost: every announcement the broker delivered is on disk before it is
acknowledged and stays there until its final event, so a `kill -9`, a crash or a restart
(SIGTERM) leaves nothing unspoken and speaks nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_tts.announcement import Announcement
from edge_tts.journal import Journal, digest

from conftest import API_KEY, Capture, DaemonProcess, Home, split_speech, write_config
from fake_dashscope import FakeDashScope, pcm_for
from mosquitto import Broker

QUEUED = [
    ("low", "Low: the post came."),
    ("normal", "Normal: the washer is done."),
    ("high", "High: the door is open."),
    ("normal", "Normal: dinner is ready."),
]


async def queue_behind_a_long_announcement(home: Home, dashscope: FakeDashScope) -> None:
    """A finished announcement, then one speaking slowly with four queued behind it."""
    await home.say({"text": "Already said.", "id": "done"})
    assert (await home.log.outcome("done"))["event"] == "finished"
    dashscope.chunk_interval_s = 0.3  # still speaking when the process goes
    await home.say({"text": "Speaking when it went.", "id": "cut"})
    await home.log.event("cut", "started")
    for i, (priority, text) in enumerate(QUEUED):
        await home.say({"text": text, "id": f"q{i}", "priority": priority})
    await home.log.wait_for(lambda: all("queued" in home.log.of(f"q{i}") for i in range(4)))


async def speaks_each_once_after_restart(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    dashscope.chunk_interval_s = 0.0
    again = DaemonProcess(daemon.config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    before = len(home.log.events)
    await again.start(home)
    try:
        await home.log.wait_for(
            lambda: sum(e["event"] == "finished" for e in home.log.events[before:]) >= 5, timeout=30
        )
    finally:
        await again.stop()
    after = home.log.events[before:]
    finished = [e["id"] for e in after if e["event"] == "finished"]
    # Each unfinished one exactly once, most urgent first, in order of arrival within a
    # priority; the one that had finished is not spoken again.
    assert finished == ["q2", "cut", "q1", "q3", "q0"]
    assert Counter(e["id"] for e in after if e["event"] == "started") == Counter(finished)
    texts = [QUEUED[2][1], "Speaking when it went.", QUEUED[1][1], QUEUED[3][1], QUEUED[0][1]]
    assert split_speech(capture.read())[1] == b"".join(pcm_for(t) for t in texts)


async def test_a_kill_9_loses_nothing_queued_and_repeats_nothing_finished(
    daemon_with: Any, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    daemon = await daemon_with(audio__keep_open_s=60)
    await queue_behind_a_long_announcement(home, dashscope)
    await daemon.kill()
    await speaks_each_once_after_restart(daemon, home, capture, dashscope)


async def test_a_restart_loses_nothing_queued(
    daemon_with: Any, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    daemon = await daemon_with(audio__keep_open_s=60)
    await queue_behind_a_long_announcement(home, dashscope)
    assert await daemon.stop() == 0  # systemctl restart: SIGTERM, then a new process
    # A restart is not a reason to tell Home Assistant anything was dropped.
    assert not [e for e in home.log.events if e["event"] in ("dropped", "failed")]
    await speaks_each_once_after_restart(daemon, home, capture, dashscope)


async def test_an_announcement_left_over_past_its_age_is_dropped_with_an_event(
    daemon_with: Any, home: Home, dashscope: FakeDashScope, state_home: Path
) -> None:
    daemon = await daemon_with(announcements__max_age_s=1)
    dashscope.chunk_interval_s = 0.3
    await home.say({"text": "Speaking when it went.", "id": "cut"})
    await home.log.event("cut", "started")
    await home.say({"text": "Waiting.", "id": "waiting"})
    await home.log.event("waiting", "queued")
    await daemon.kill()
    # Older than max_age_s by the time it comes back.
    journal = state_home / "queue-kitchen.jsonl"
    lines = [json.loads(x) for x in journal.read_text().split("\n") if x]
    for record in lines:
        record["received"] -= 60
    journal.write_text("".join("\n" + json.dumps(r) for r in lines))
    dashscope.chunk_interval_s = 0.0
    again = DaemonProcess(daemon.config, daemon.env)
    await again.start(home)
    try:
        dropped = await home.log.event("waiting", "dropped")
        assert dropped["error"].startswith("too old: sent 6")
        await home.log.wait_for(lambda: home.log.of("cut")[-1:] == ["dropped"])
    finally:
        await again.stop()
    assert "finished" not in home.log.of("waiting") + home.log.of("cut")


async def test_an_unexpected_error_ends_the_process_at_once_saying_offline(
    tmp_path: Path, daemon_with: Any, home: Home
) -> None:
    """A part of the daemon that dies (here the queue, made to break at its first
    announcement) ends the process with `offline` published, without waiting for anything,
    so systemd restarts it."""
    running = await daemon_with()
    await running.stop()
    script = tmp_path / "broken.py"
    script.write_text(
        "import sys, edge_tts.queue as q\n"
        "get = q.AnnouncementQueue.get\n"
        "async def broken(self):\n"
        "    await get(self)\n"
        "    raise RuntimeError('the queue broke')\n"
        "q.AnnouncementQueue.get = broken\n"
        "from edge_tts.__main__ import main\n"
        f"sys.exit(main(['serve', '-c', {str(running.config)!r}]))\n"
    )
    proc = DaemonProcess(running.config, running.env)
    proc_args = [sys.executable, str(script)]
    offline_before = home.log.availability.count("offline")
    online_before = home.log.availability.count("online")
    proc.proc = await asyncio.create_subprocess_exec(
        *proc_args, env=running.env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await home.log.wait_for(lambda: home.log.availability.count("online") > online_before)
        started = time.monotonic()
        await home.say({"text": "Break it.", "id": "break"})
        async with asyncio.timeout(20):
            code = await proc.proc.wait()
    finally:
        if proc.proc.returncode is None:  # it hung: the test fails, the process goes
            proc.proc.kill()
            await proc.proc.wait()
    assert code == 70
    await home.log.wait_for(lambda: home.log.availability.count("offline") > offline_before)
    assert time.monotonic() - started < 20
    assert proc.proc.stderr is not None
    assert b"the queue broke" in await proc.proc.stderr.read()


# --- the journal itself -------------------------------------------------------------------


def test_the_journal_gives_back_what_did_not_end_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "q.jsonl")
    assert journal.open() == ([], [])
    a = journal.add(Announcement(text="one", id="1"), mid=5, payload_digest=digest(b"one"))
    b = journal.add(Announcement(text="two", id="2", priority="high", chime="builtin"))
    c = journal.add(Announcement(text="three", id="3", sent_at=123.0))
    journal.end(b)
    journal.close()
    again = Journal(tmp_path / "q.jsonl")
    restored, _ = again.open()
    assert [(r.announcement.id, r.announcement.text) for r in restored] == [
        ("1", "one"),
        ("3", "three"),
    ]
    assert restored[1].announcement.sent_at == 123.0
    assert again.redelivered(5, digest(b"one")) and not again.redelivered(5, digest(b"x"))
    # The rewritten file holds only what is pending; new entries never reuse a number.
    d = again.add(Announcement(text="four", id="4"))
    assert d.seq is not None and a.seq is not None and c.seq is not None and d.seq > c.seq
    again.end(restored[0].announcement)
    again.end(restored[1].announcement)
    again.close()
    assert [r.announcement.id for r in Journal(tmp_path / "q.jsonl").open()[0]] == ["4"]


def test_a_torn_line_is_skipped_and_the_rest_restored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "q.jsonl")
    journal.open()
    journal.add(Announcement(text="kept", id="k"))
    journal.close()
    with (tmp_path / "q.jsonl").open("ab") as f:
        f.write(b'\n{"add": 9, "announcement": {"text": "to')  # the power went here
    assert [r.announcement.id for r in Journal(tmp_path / "q.jsonl").open()[0]] == ["k"]


def test_one_flushed_write_per_announcement_and_it_shrinks_when_idle(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "q.jsonl")
    journal.open()
    for i in range(400):
        journal.end(journal.add(Announcement(text="x" * 100, id=str(i))))
    assert (tmp_path / "q.jsonl").stat().st_size < 64 * 1024 + 1024  # emptied once it grew


def test_a_journal_that_cannot_be_written_does_not_stop_announcements(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    journal = Journal(blocked / "q.jsonl")  # its directory cannot exist
    assert journal.open() == ([], [])
    a = journal.add(Announcement(text="still spoken", id="s"))
    assert a.seq is not None and journal.problem and "cannot write" in journal.problem
    journal.end(a)


def test_the_state_and_cache_directories_follow_systemd_then_xdg_then_home(
    tmp_path: Path,
) -> None:
    from edge_tts.paths import cache_dir, state_dir

    service = {"STATE_DIRECTORY": "/var/lib/edge-tts", "CACHE_DIRECTORY": "/var/cache/edge-tts"}
    assert state_dir(service | {"HOME": "/root"}) == Path("/var/lib/edge-tts")
    assert cache_dir(service | {"HOME": "/root"}) == Path("/var/cache/edge-tts")
    assert state_dir({"STATE_DIRECTORY": "/a:/b"}) == Path("/a")  # several: the first
    assert state_dir({"XDG_STATE_HOME": str(tmp_path), "HOME": "/h"}) == tmp_path / "edge-tts"
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path), "HOME": "/h"}) == tmp_path / "edge-tts"
    assert state_dir({"HOME": "/h"}) == Path("/h/.local/state/edge-tts")
    assert cache_dir({"HOME": "/h", "XDG_CACHE_HOME": "relative"}) == Path("/h/.cache/edge-tts")


def test_with_no_place_named_anywhere_the_state_directory_says_what_to_set() -> None:
    """No STATE_DIRECTORY, no HOME, and a user the password database does not know (a
    dynamic user without libnss-systemd): a clear error, not Path.home()'s RuntimeError; the
    cache has no place (None: off, with a warning) rather than a crash."""
    out = subprocess.run(
        ["unshare", "--user", "--map-user=54321", "--map-group=54321", sys.executable, "-c",
         "from edge_tts.paths import cache_dir, state_dir\n"
         "print(cache_dir({}))\n"
         "state_dir({})"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60,
    )  # fmt: skip
    assert out.stdout == "None\n", out.stderr
    assert "ConfigError: no directory for the queue and the counts: run edge-tts as the " \
        "service (StateDirectory=), or set HOME or XDG_STATE_HOME" in out.stderr  # fmt: skip


def test_a_second_process_for_the_same_device_leaves_the_queue_alone(tmp_path: Path) -> None:
    first = Journal(tmp_path / "q.jsonl")
    first.open()
    first.add(Announcement(text="mine", id="m"))
    second = Journal(tmp_path / "q.jsonl")
    assert second.open() == ([], [])  # not replayed by the second one
    assert second.problem and "another edge-tts process" in second.problem
    second.end(second.add(Announcement(text="its own", id="o")))  # in memory, harmless
    first.close()
    assert [r.announcement.id for r in Journal(tmp_path / "q.jsonl").open()[0]] == ["m"]


def seed_journal(path: Path, record: dict[str, Any] | str, *more: str) -> None:
    """What a process that died mid-intake left: journaled, unended announcements (a record,
    or lines as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [record if isinstance(record, str) else json.dumps(record), *more]
    path.write_text("\n" + "\n".join(lines))


async def test_the_brokers_redelivery_of_a_journaled_message_is_not_spoken_twice(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    capture: Capture,
    state_home: Path,
) -> None:
    """The process died after journaling a message but before acknowledging it: the broker
    delivers it again (to a fresh session, as packet 1). The journal has it already: it is
    spoken once, from the journal, and the redelivery is recognised."""
    payload = json.dumps({"text": "Journaled, not acknowledged.", "id": "r1"}).encode()
    seed_journal(
        state_home / "queue-kitchen.jsonl",
        {
            "add": 1,
            "mid": 1,
            "digest": digest(payload),
            "received": time.time(),
            "announcement": {"text": "Journaled, not acknowledged.", "id": "r1"},
        },
    )
    config = write_config(
        tmp_path / "c.yaml", broker, dashscope, announcements__dedupe_s=0, audio__keep_open_s=60
    )
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        await home.client.publish("edge-tts/kitchen/say", payload, qos=1)  # the redelivery
        await home.say({"text": "After it.", "id": "after"})
        assert (await home.log.outcome("after"))["event"] == "finished"
    finally:
        await daemon.stop()
    assert home.log.of("r1") == ["queued", "started", "finished"]  # once, from the journal
    assert split_speech(capture.read())[1] == pcm_for("Journaled, not acknowledged.") + pcm_for(
        "After it."
    )
    assert b"redelivery of one already queued" in daemon.stderr


# --- a damaged state file: input from outside too ---------------------------------------------


def entry(seq: int, **fields: Any) -> str:
    """A journal line as the journal writes it, its announcement's fields as given."""
    record = {"add": seq, "mid": 0, "digest": "", "received": time.time(), "announcement": fields}
    return json.dumps(record)


DAMAGED = [
    '{"add": Infinity, "received": 1.0, "announcement": {"text": "inf", "id": "inf"}}',
    '{"end": Infinity}',
    '{"add": 3, "mid": Infinity, "received": 1e300, "announcement": {"text": "x", "id": "m"}}',
    '{"add": 4, "received": "yesterday", "announcement": {"text": "when?", "id": "when"}}',
    entry(5, text="Held by a string.", id="p", play_at="soon"),
    entry(6, text="Sent by a string.", id="s", sent_at="then"),
    entry(7, text="x" * 950_000, id="long"),
    entry(8, text="A voice not configured.", id="v", voice="nobody"),
    entry(9, text="Of no group.", id="g", group="../etc"),
    entry(10, text=["not", "text"], id="t"),
    entry(11, text="A bad priority.", id="pr", priority="urgent"),
    "[1, 2, 3]",
    '{"add": true, "announcement": {"text": "bool", "id": "b"}}',
    entry(12, text="The good one is spoken.", id="good"),
]


async def test_a_damaged_journal_starts_the_daemon_and_only_what_is_valid_is_spoken(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    capture: Capture,
    state_home: Path,
) -> None:
    """A power cut, a failing SD card, a hand edit: every entry is held to the rules of a
    `say` payload (the text's limit included: a 950,000-character entry went to the fallback
    voice and blocked the queue). What cannot be spoken fails with its reason; the daemon
    starts and speaks the rest, and the next message."""
    seed_journal(state_home / "queue-kitchen.jsonl", *DAMAGED)
    config = write_config(tmp_path / "c.yaml", broker, dashscope, audio__keep_open_s=60)
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        assert (await home.log.outcome("good"))["event"] == "finished"
        await home.say({"text": "And the next.", "id": "next"})
        assert (await home.log.outcome("next"))["event"] == "finished"
    finally:
        await daemon.stop()
    assert split_speech(capture.read())[1] == pcm_for("The good one is spoken.") + pcm_for(
        "And the next."
    )
    reasons = {e["id"]: e["error"] for e in home.log.events if e["event"] == "failed" and e["id"]}
    resumed = "not resumed from the queue journal: "
    assert reasons == {
        "when": resumed + "no time it was received",
        "p": resumed + "'play_at' must be an ISO 8601 time with its offset "
        "(2026-11-26T08:00:00+01:00) or epoch seconds (got 'soon')",
        "s": resumed + "'sent_at' must be an ISO 8601 time or epoch seconds (got 'then')",
        "long": resumed + "text is 950000 characters, over the limit of 200 "
        "(announcements.max_chars)",
        "v": resumed + "unknown voice 'nobody' (known: bright, default)",
        "g": resumed + "'group' '../etc' is not a group name",
        "t": resumed + "'text' must be a string",
        "pr": resumed + "'priority' must be one of low, normal, high, critical",
    }, reasons
    assert b"Traceback" not in daemon.stderr
    # What was refused is gone from the journal: the next start has nothing to resume.
    again = Journal(state_home / "queue-kitchen.jsonl")
    assert again.open() == ([], [])


async def test_a_journal_of_more_than_a_queue_can_leave_is_kept_aside_and_the_newest_queued(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    home: Home,
    state_home: Path,
) -> None:
    """100,000 unfinished entries (a run leaves at most a full queue, as many held and one
    playing): restoring them blocked the event loop for 69 s, past the unit's watchdog. The
    newest 2 x queue_size + 1 are queued (the rest of those dropped, as a full queue drops),
    the file is kept beside for a person, and the daemon is ready at once."""
    lines = [entry(n, text=f"Entry {n}.", id=f"e{n}") for n in range(1, 100_001)]
    seed_journal(state_home / "queue-kitchen.jsonl", *lines)
    config = write_config(tmp_path / "c.yaml", broker, dashscope, announcements__queue_size=5)
    daemon = DaemonProcess(config, dict(os.environ, DASHSCOPE_API_KEY=API_KEY))
    await daemon.start(home)
    try:
        await home.say({"text": "Still heard.", "id": "heard", "priority": "critical"})
        assert (await home.log.outcome("heard"))["event"] == "finished"
    finally:
        await daemon.stop()
    touched = {e["id"] for e in home.log.events if e["id"].startswith("e")}
    assert touched == {f"e{n}" for n in range(100_000 - 10, 100_001)}  # the newest 11
    (aside,) = kept_aside(state_home)
    assert aside.read_text().count("\n") == 100_000  # as it was
    assert b"more unfinished entries than can be pending: the newest 11 are" in daemon.stderr
    assert home.log.stats[-1]["queue"]["damaged_file"] == str(aside)


def kept_aside(state: Path) -> list[Path]:
    return list(state.glob("queue-kitchen.jsonl.damaged-*"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {"text": _json | st.text(max_size=30), "id": _json | st.text(min_size=1, max_size=8)},
    optional={k: _json for k in ("voice", "volume", "priority", "chime", "cache", "sent_at",
                                 "play_at", "ssml", "group", "instructions")},
)  # fmt: skip
_record = st.fixed_dictionaries(
    {"add": st.integers(1, 50) | _json, "received": st.floats() | _json, "announcement": _fields},
    optional={"mid": _json, "digest": _json},
)


@settings(max_examples=300)
@given(lines=st.lists(_record.map(json.dumps) | st.text(max_size=40), max_size=6))
def test_any_journal_is_restored_or_refused_entry_by_entry_never_raised(lines: list[str]) -> None:
    """Whatever a file holds, reading it gives announcements that keep the rules, and reasons
    for the rest: never an exception (one stopped the daemon on every start)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.jsonl"
        path.write_text("\n".join(lines), errors="surrogatepass")
        restored, refused = Journal(path).open()
        for r in restored:
            a = r.announcement
            assert isinstance(a.text, str) and 0 < len(a.text) <= 2000
            assert a.volume is None or 0 <= a.volume <= 100
        assert all(isinstance(r.reason, str) and r.reason for r in refused)
