"""The `edge-tts` command as a user types it: say, check, devices, and a bad config."""

from __future__ import annotations

import os
import re
import wave
from pathlib import Path

import pytest

from edge_tts.clock import ClockState, clock_state, describe, read_state

from conftest import (
    API_KEY,
    Broker,
    Capture,
    DaemonProcess,
    Home,
    Run,
    command,
    edge_tts,
    split_speech,
    write_config,
)
from fake_dashscope import FakeDashScope, pcm_for

ROOT = Path(__file__).resolve().parent.parent


async def test_say_to_a_wav_file_writes_the_clouds_exact_pcm(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    out = tmp_path / "hello.wav"
    run = await edge_tts("say", "-c", str(config), "-o", str(out), "Hello", "there.")
    assert run.code == 0, run.err
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        assert wav.readframes(wav.getnframes()) == pcm_for("Hello there.")


async def test_say_plays_through_alsa_with_the_chosen_voice(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, capture: Capture
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    run = await edge_tts("say", "-c", str(config), "-v", "bright", "Dinner is ready.")
    assert run.code == 0, run.err
    _, speech, _ = split_speech(capture.read())
    assert speech == pcm_for("Dinner is ready.", voice="longxiaochun")


async def test_say_without_a_key_tells_where_to_put_one(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    run = await edge_tts("say", "-c", str(config), "-o", str(tmp_path / "x.wav"), "Hi.", key=None)
    assert run.code == 1
    assert "DASHSCOPE_API_KEY" in run.err
    assert "Traceback" not in run.err
    assert not dashscope.tasks


async def test_say_with_an_unknown_voice_is_refused(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    run = await edge_tts("say", "-c", str(config), "-v", "pirate", "Ahoy.")
    assert run.code == 2
    assert "unknown voice 'pirate'" in run.err and "default" in run.err
    assert not dashscope.tasks


async def test_check_passes_on_a_working_setup_without_synthesizing(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    run = await edge_tts("check", "-c", str(config))
    assert run.code == 0, run.all
    assert f"ok   broker 127.0.0.1:{broker.port}" in run.out
    assert f"ok   cloud {dashscope.url}" in run.out
    assert "ok   audio device 'default'" in run.out
    assert "all checks passed" in run.out
    # This machine's clock, as its kernel tells: a warning when unsynchronized, not a failure.
    clock = describe(clock_state())[1]
    assert f"ok   {clock}" in run.out if clock_state().synchronized else f"warn {clock}" in run.out
    # One task started and finished with no text: nothing synthesized, nothing paid for.
    assert [(t.texts, t.outcome) for t in dashscope.tasks] == [([], "finished")]


async def test_check_config_only_is_what_a_reload_would_take_and_reaches_nothing(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    """The unit's ExecReload runs it first: a config the daemon would refuse fails the
    reload itself, with the reason. It asks neither the broker nor the cloud."""
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    broker.stop()
    run = await edge_tts("check", "--config-only", "-c", str(config))
    assert (run.code, run.out) == (0, f"config: {config} is valid\n"), run.all
    assert dashscope.handshakes == 0
    config.write_text(config.read_text().replace(f"port: {broker.port}", "port: 99999"))
    run = await edge_tts("check", "--config-only", "-c", str(config))
    assert run.code == 2
    assert run.err == "edge-tts: config error: mqtt.port: must be an integer 1-65535\n"


async def test_check_without_a_key_says_where_to_put_one_once(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    run = await edge_tts("check", "-c", str(config), key=None)
    assert run.code == 1
    line = next(line for line in run.out.splitlines() if line.startswith("FAIL cloud"))
    assert line.endswith(": no DashScope API key: set dashscope.api_key_file or $DASHSCOPE_API_KEY")


async def test_check_reports_a_refused_key_without_showing_it(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    wrong = "sk-wrong-key-abcdef0123456789"
    run = await edge_tts("check", "-c", str(config), key=wrong)
    assert run.code == 1
    assert (
        f"FAIL cloud {dashscope.url} (voices bright, default): DashScope refused the API key "
        "(HTTP 401) (check dashscope.api_key_file or $DASHSCOPE_API_KEY)"
    ) in run.out
    assert run.out.count("FAIL cloud") == 1  # one endpoint, one line
    assert wrong not in run.all and API_KEY not in run.all
    assert "ok   broker" in run.out  # the other checks still ran


async def test_check_reports_an_unreachable_broker_and_cloud(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope)
    broker.stop()
    await dashscope.stop()
    run = await edge_tts("check", "-c", str(config))
    assert run.code == 1
    assert f"FAIL broker 127.0.0.1:{broker.port}:" in run.out
    assert f"FAIL cloud {dashscope.url} (voices bright, default): cannot reach DashScope" in run.out
    assert "2 problem(s) found" in run.err


async def test_check_reports_a_missing_audio_device(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(tmp_path / "c.yaml", broker, dashscope, audio__device="no-such-speaker")
    run = await edge_tts("check", "-c", str(config))
    assert run.code == 1
    assert "FAIL audio: device 'no-such-speaker' cannot play" in run.out


async def test_a_bad_config_is_refused_with_its_key_path_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("mqtt:\n  port: 99999\n")
    for argv in (["serve"], ["check"], ["say", "hi"]):
        run = await edge_tts(argv[0], "-c", str(config), *argv[1:])
        assert run.code == 2
        assert run.err.strip() == "edge-tts: config error: mqtt.port: must be an integer 1-65535"


async def test_config_is_found_through_the_environment(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "elsewhere.yaml", broker, dashscope)
    monkeypatch.setenv("EDGE_TTS_CONFIG", str(config))
    run = await edge_tts("say", "-o", str(tmp_path / "x.wav"), "Found it.", cwd=tmp_path)
    assert run.code == 0, run.err
    assert dashscope.tasks[-1].texts == ["Found it."]


async def test_devices_lists_the_default_output() -> None:
    run = await edge_tts("devices")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and "default" in marked[0]


async def test_check_sets_up_each_qwen_voice_and_warns_about_impossible_profiles(
    tmp_path: Path, broker: Broker, dashscope: FakeDashScope
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        broker,
        dashscope,
        dashscope__realtime_url=dashscope.realtime_url,
        voices__butler={
            "engine": "qwen",
            "model": "qwen3-tts-instruct-flash-realtime",
            "voice": "Serena",
            "instructions": "Calm",
        },
        voices__zhichu={"engine": "sambert", "model": "sambert-zhichu-v1"},
        voices__ghost={
            "engine": "qwen",
            "model": "qwen3-tts-flash-realtime",
            "voice": "no-such-voice",
        },
    )
    run = await edge_tts("check", "-c", str(config))
    assert run.code == 1, run.all
    assert (
        f"FAIL cloud {dashscope.realtime_url} (voice ghost): DashScope refused voice 'ghost' "
        "(qwen3-tts-flash-realtime, "
        "no-such-voice): invalid_value"
    ) in run.out
    assert "(check voices.ghost)" in run.out
    assert "warn voices.zhichu.model: Sambert is not among the models" in run.out
    # The Serena session was set up and dropped: nothing said, nothing paid for.
    sessions = [t for t in dashscope.tasks if t.streaming == "realtime"]
    assert {t.parameters["voice"] for t in sessions} == {"Serena", "Cherry"}  # ghost: refused
    assert all(not t.texts for t in dashscope.tasks)


@pytest.mark.parametrize(
    ("voice", "profile", "speaker"),
    [
        (
            "butler",
            {"engine": "qwen", "model": "qwen3-tts-flash-realtime", "voice": "Ethan"},
            "Ethan",
        ),
        ("zhichu", {"engine": "sambert", "model": "sambert-zhichu-v1"}, "sambert-zhichu-v1"),
    ],
)
async def test_say_speaks_qwen_and_sambert_voices_once_and_keeps_nothing_open(
    tmp_path: Path,
    broker: Broker,
    dashscope: FakeDashScope,
    voice: str,
    profile: dict[str, str],
    speaker: str,
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        broker,
        dashscope,
        dashscope__realtime_url=dashscope.realtime_url,
        **{f"voices__{voice}": profile},
    )
    out = tmp_path / "hello.wav"
    run = await edge_tts("say", "-c", str(config), "-v", voice, "-o", str(out), "Good night.")
    assert run.code == 0, run.err
    with wave.open(str(out)) as wav:
        assert wav.readframes(wav.getnframes()) == pcm_for("Good night.", speaker)
    # A one-off: no session or connection made ready for a next time that never comes.
    assert len(dashscope.connections) == 1


async def test_a_task_the_service_fails_shows_in_stats_and_check(
    daemon: DaemonProcess, home: Home, dashscope: FakeDashScope
) -> None:
    """A key refused at task level (or any task-failed) connects fine: it must still show
    as a failure in the daemon's stats and in `check`, with its reason."""
    await home.say({"text": "This one [fail] breaks.", "id": "refused"})
    assert (await home.log.outcome("refused"))["event"] == "failed"
    # Asked again for the rest before giving up: each refusal counted.
    await home.log.wait_for(
        lambda: bool(home.log.stats) and home.log.stats[-1]["cloud"]["task_failures"] >= 1
    )
    assert "fake [fail] marker" in home.log.stats[-1]["cloud"]["last_task_error"]
    run = await edge_tts("check", "-c", str(daemon.config))
    assert re.search(r"\d+ tasks failed or refused by the service", run.out), run.all
    assert "fake [fail] marker" in run.out


async def test_setup_again_installs_nothing_and_needs_no_package_index() -> None:
    """A restart of `scripts/run` must work offline: once set up, set-up does nothing."""

    async def setup(*args: str, **env: str) -> Run:
        return await command(
            str(ROOT / "scripts" / "setup"),
            *args,
            env=dict(os.environ, **env),
            cwd=ROOT,
            timeout=600,
        )

    assert (await setup("--test")).code == 0  # as scripts/test left it (installs if it changed)
    nowhere = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_INDEX": "1"}
    for args in (("--test",), ()):  # the test set-up covers the runtime one
        run = await setup(*args, **nowhere)
        assert run.code == 0, run.all
        assert "nothing changed" in run.out


@pytest.mark.parametrize(
    "argv",
    [
        ["cache", "warm", "-c", "my.yaml", "phrases.txt", "-v", "butler"],
        ["cache", "warm", "phrases.txt", "-c", "my.yaml", "-v", "butler"],
        ["cache", "-c", "my.yaml", "-v", "butler", "warm", "phrases.txt"],
        ["--verbose", "cache", "warm", "-v", "butler", "phrases.txt", "--config", "my.yaml"],
    ],
)
def test_options_go_before_or_after_the_arguments(argv: list[str]) -> None:
    from edge_tts.__main__ import parse_args

    args = parse_args(argv)
    assert (args.command, args.action, args.file, args.config, args.voice) == (
        "cache",
        "warm",
        "phrases.txt",
        "my.yaml",
        "butler",
    )


def test_say_takes_its_options_anywhere_among_the_words() -> None:
    from edge_tts.__main__ import parse_args

    args = parse_args(["say", "Dinner", "-v", "butler", "is", "ready.", "-o", "out.wav"])
    assert (args.text, args.voice, args.output) == (["Dinner", "is", "ready."], "butler", "out.wav")


def test_the_kernels_clock_state_reads_as_synchronized_or_not() -> None:
    assert read_state(0, 12_000) == ClockState(True, 12.0)  # TIME_OK, 12 ms
    assert read_state(1, 500) == ClockState(True, 0.5)  # a leap second pending: still in step
    assert read_state(5, 16_000_000) == ClockState(False, 16_000.0)  # TIME_ERROR
    assert read_state(-1, 0) == ClockState(None)
    assert describe(ClockState(True, 12.0)) == (
        True,
        "clock NTP-synchronized (error at most 12 ms)",
    )
    fine, says = describe(ClockState(False, 16_000.0))
    assert not fine and "not NTP-synchronized" in says and "timedatectl set-ntp true" in says
    assert describe(ClockState(None))[0] is False
