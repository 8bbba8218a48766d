"""From an MQTT publish to the exact PCM at the ALSA output, through the real daemon process."""

from __future__ import annotations

import asyncio
import shutil

from conftest import API_KEY, Broker, Capture, DaemonProcess, Home, home_assistant, split_speech
from fake_dashscope import FakeDashScope, pcm_for

LEAD_IN_BYTES = 100 * 48  # audio.lead_in_ms in the test config, at 24 kHz 16-bit mono


async def test_mosquitto_pub_announcement_puts_the_clouds_exact_pcm_on_alsa(
    daemon: DaemonProcess, home: Home, capture: Capture, broker: Broker
) -> None:
    text = "Hello from the kitchen."
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub, "mosquitto-clients is installed by scripts/setup"
    pub = await asyncio.create_subprocess_exec(
        mosquitto_pub,
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-q",
        "1",
        "-t",
        "edge-tts/kitchen/say",
        "-m",
        text,
    )
    assert await pub.wait() == 0
    await home.log.wait_for(lambda: any(e["event"] == "queued" for e in home.log.events))
    announcement_id = home.log.events[0]["id"]
    end = await home.log.outcome(announcement_id)

    assert end["event"] == "finished", end
    assert home.log.of(announcement_id) == ["queued", "started", "finished"]
    started = await home.log.event(announcement_id, "started")
    assert started["source"] == "cloud"
    assert isinstance(started["first_audio_ms"], int) and started["first_audio_ms"] >= 0
    lead, speech, trail = split_speech(capture.read())
    assert lead == LEAD_IN_BYTES
    assert speech == pcm_for(text)
    assert trail == 0


async def test_json_announcement_uses_its_voice_and_id(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    await home.say({"text": "The washing machine is done.", "voice": "bright", "id": "wash-1"})
    assert (await home.log.outcome("wash-1"))["event"] == "finished"
    _, speech, _ = split_speech(capture.read())
    assert speech == pcm_for("The washing machine is done.", voice="longxiaochun")
    task = dashscope.tasks[-1]
    assert task.parameters["voice"] == "longxiaochun"
    assert task.parameters["format"] == "pcm" and task.parameters["sample_rate"] == 24000


async def test_state_goes_speaking_then_idle_and_availability_is_online(
    daemon: DaemonProcess, home: Home
) -> None:
    await home.say({"text": "Front door opened.", "id": "door"})
    await home.log.outcome("door")
    await home.log.wait_for(lambda: home.log.states and home.log.states[-1]["state"] == "idle")
    assert {"state": "speaking", "id": "door", "text": "Front door opened."} in home.log.states
    assert home.log.availability[-1] == "online"


async def test_bad_input_fails_with_a_reason_and_the_next_announcement_is_spoken(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    bad = [
        (b'{"text": "unterminated', "invalid JSON"),
        (b'{"voice": "default"}', "no 'text'"),
        (b"   \n\t ", "text is empty"),
        (b'{"text": "   "}', "text is empty"),
        ("x" * 201, "over the limit of 200"),
        (b'{"text": "Hi", "voice": "pirate"}', "unknown voice 'pirate'"),
        (b"\xff\xfe\x00binary", "not valid UTF-8"),
        (b"ok\x00\x01\x02", "control characters"),
        (b'["a", "list"]', "must be an object"),
        (b'{"text": "Hi", "volume": 300}', "'volume' must be"),
    ]
    for payload, _ in bad:
        await home.say(payload)
    await home.log.wait_for(
        lambda: sum(e["event"] == "failed" for e in home.log.events) == len(bad)
    )
    failures = [e for e in home.log.events if e["event"] == "failed"]
    for (payload, reason), event in zip(bad, failures, strict=True):
        assert reason in event["error"], (payload, event)
        assert event["id"]
    assert not any(e["event"] in ("queued", "started") for e in home.log.events)
    assert capture.read() == b""  # nothing spoken

    await home.say({"text": "Still here.", "id": "after"})
    assert (await home.log.outcome("after"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("Still here.")
    assert daemon.proc is not None and daemon.proc.returncode is None


async def test_cloud_failure_is_a_failed_event_and_the_daemon_speaks_on(
    daemon: DaemonProcess, home: Home, capture: Capture, dashscope: FakeDashScope
) -> None:
    await home.say({"text": "This one breaks [fail]", "id": "bad"})
    failed = await home.log.outcome("bad")
    assert failed["event"] == "failed"
    assert "InternalError" in failed["error"]
    await home.say({"text": "This one works.", "id": "good"})
    assert (await home.log.outcome("good"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("This one works.")


async def test_a_stalled_cloud_ends_in_a_failed_event_not_a_hang(
    daemon: DaemonProcess, home: Home
) -> None:
    await home.say({"text": "Stuck [stall]", "id": "stuck"})
    failed = await home.log.outcome("stuck", timeout=10)
    assert failed["event"] == "failed"
    assert "stall_timeout_s" in failed["error"]
    await home.say({"text": "Unstuck.", "id": "next"})
    assert (await home.log.outcome("next"))["event"] == "finished"


async def test_stop_cuts_the_current_announcement_and_drops_the_queue(
    daemon: DaemonProcess, home: Home
) -> None:
    await home.say({"text": "A very long story [stall]", "id": "long"})
    await home.say({"text": "Waiting in line.", "id": "queued"})
    await home.log.event("long", "started")
    await home.stop()
    dropped = await home.log.event("long", "dropped")
    assert dropped["error"] == "stopped"
    assert (await home.log.event("queued", "dropped"))["error"] == "stopped"
    assert "failed" not in home.log.of("long")  # cut by the stop, not by the stall timeout
    await home.say({"text": "After the stop.", "id": "after"})
    assert (await home.log.outcome("after"))["event"] == "finished"


async def test_all_topic_reaches_every_device(
    daemon: DaemonProcess, home: Home, capture: Capture
) -> None:
    await home.say({"text": "Dinner is ready.", "id": "all-1"}, device="all")
    assert (await home.log.outcome("all-1"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("Dinner is ready.")


async def test_daemon_survives_a_broker_restart(
    daemon: DaemonProcess, home: Home, broker: Broker, capture: Capture
) -> None:
    broker.stop()
    broker.start()
    # Home Assistant's own client reconnects too; this test uses a fresh one.
    async with home_assistant(broker, identifier="ha-2") as again:
        await again.log.wait_for(lambda: "online" in again.log.availability, timeout=20)
        await again.say({"text": "Back again.", "id": "again"})
        assert (await again.log.outcome("again"))["event"] == "finished"
    assert split_speech(capture.read())[1] == pcm_for("Back again.")


async def test_sigterm_says_offline_and_exits_cleanly_without_leaking_the_key(
    daemon: DaemonProcess, home: Home
) -> None:
    await home.say({"text": "Goodbye.", "id": "bye"})
    await home.log.outcome("bye")
    code = await daemon.stop()
    assert code == 0
    await home.log.wait_for(lambda: home.log.availability[-1:] == ["offline"])
    assert API_KEY.encode() not in daemon.stderr
    assert b"Traceback" not in daemon.stderr


async def test_events_and_state_are_published_at_qos_1(
    daemon: DaemonProcess, home: Home, broker: Broker
) -> None:
    """At QoS 1 the broker passes them on at QoS 1 to a QoS 1 subscriber (Home Assistant):
    a published-at-0 event would arrive at 0, and could be lost."""
    import aiomqtt

    qos: dict[str, int] = {}
    async with aiomqtt.Client(broker.host, broker.port, identifier="qos-probe") as client:
        await client.subscribe("edge-tts/kitchen/#", qos=1)
        await home.say({"text": "Checking QoS.", "id": "q"})
        async with asyncio.timeout(15):
            async for message in client.messages:
                qos[str(message.topic).rsplit("/", 1)[1]] = message.qos
                if message.topic.matches("edge-tts/kitchen/event") and b'"finished"' in bytes(
                    message.payload  # type: ignore[arg-type]
                ):
                    break
    assert qos["event"] == 1 and qos["state"] == 1


def test_a_secret_in_any_log_line_is_masked() -> None:
    """The last line of defence, whatever a log call passes in (an exception's text, say)."""
    import io
    import logging

    from edge_tts.secret import RedactSecrets, Secret

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets([Secret("sk-secret-123456"), Secret("mqtt-pass")]))
    log = logging.getLogger("test-redaction")
    log.addHandler(handler)
    try:
        log.error("refused: %s", "Bearer sk-secret-123456 with mqtt-pass")
        log.error("plain sk-secret-123456")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "sk-secret" not in text and "mqtt-pass" not in text
    assert text.count("********") == 3
