"""Config validation: every bad value is refused with its key path and the reason."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edge_tts.config import (
    REGION_URLS,
    ConfigError,
    Secret,
    WyomingConfig,
    find_config,
    load_api_key,
    load_config,
    parse_config,
)

ROOT = Path(__file__).parent.parent


def test_shipped_config_loads_with_every_contract_key() -> None:
    config = load_config(str(ROOT / "config" / "edge-tts.yaml"), {})
    assert config.device.name == "kitchen"
    assert (
        config.mqtt.topic_prefix == "edge-tts" and config.mqtt.discovery_prefix == "homeassistant"
    )
    assert config.dashscope.inference_url == REGION_URLS["intl"][0]
    assert set(config.voices) == {"default", "butler", "offline"}  # one of each engine here
    assert {v.engine for v in config.voices.values()} == {"cosyvoice", "qwen", "piper"}
    assert config.default_voice == "default" and config.fallback_voice == "offline"
    assert config.audio.sample_rate == 24000 and config.cache.max_mb == 200
    assert config.wyoming == WyomingConfig(enabled=True, host="0.0.0.0", port=10200, zeroconf=True)


def test_no_file_anywhere_gives_builtin_defaults(tmp_path: Path) -> None:
    nowhere = (tmp_path / "etc" / "config.yaml", tmp_path / "config" / "edge-tts.yaml")
    assert find_config(None, {}, nowhere) is None
    config = load_config(None, {}, nowhere)
    assert config.source is None
    assert config == parse_config({})
    assert config.voices["default"].model == "cosyvoice-v3-flash"
    assert config.device.name == (socket.gethostname().split(".")[0] or "edge-tts")


def test_the_system_config_comes_before_the_shipped_one(tmp_path: Path) -> None:
    system, shipped = tmp_path / "etc.yaml", tmp_path / "shipped.yaml"
    shipped.write_text("device: {name: shipped}\n")
    assert load_config(None, {}, (system, shipped)).device.name == "shipped"
    system.write_text("device: {name: system}\n")
    assert load_config(None, {}, (system, shipped)).device.name == "system"
    assert (
        load_config(None, {"EDGE_TTS_CONFIG": str(shipped)}, (system, shipped)).device.name
        == "shipped"
    )


def test_search_order(tmp_path: Path) -> None:
    assert find_config("a.yaml", {"EDGE_TTS_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert find_config(None, {"EDGE_TTS_CONFIG": "b.yaml"}) == Path("b.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mqtt": {"port": 70000}}, "mqtt.port: must be an integer 1-65535"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port: must be an integer 1-65535"),
        ({"mqtt": {"prot": 1883}}, "mqtt.prot: unknown key (did you mean port?)"),
        ({"mqtt": {"tls": {"ca_file": "/nonexistent/ca.pem"}}}, "mqtt.tls.ca_file: no such file"),
        ({"mqtt": {"password": "a", "password_file": "/x"}}, "mqtt.password: set either"),
        ({"dashscope": {"region": "eu"}}, "dashscope.region: must be one of intl, cn"),
        ({"dashscope": {"inference_url": "http://x"}}, "dashscope.inference_url: must be a ws://"),
        ({"dashscope": {"keep_warm": "yes"}}, "dashscope.keep_warm: must be true or false"),
        (
            {"quiet_hours": {"windows": ["22:00-22:00"]}},
            "quiet_hours.windows: '22:00-22:00' ends where it starts",
        ),
        ({"wyoming": {"port": 0}}, "wyoming.port: must be an integer 1-65535"),
        ({"wyoming": {"port": 65536}}, "wyoming.port: must be an integer 1-65535"),
        ({"wyoming": {"enabled": "no"}}, "wyoming.enabled: must be true or false"),
        ({"wyoming": {"zerconf": False}}, "wyoming.zerconf: unknown key (did you mean zeroconf?)"),
        (
            {"voices": {"a": {"engine": "espeak"}}, "default_voice": "a"},
            "voices.a.engine: must be one of",
        ),
        (
            {"voices": {"a": {"engine": "cosyvoice", "voice": "x"}}, "default_voice": "a"},
            "voices.a.model: is required for engine cosyvoice",
        ),
        (
            {
                "voices": {"a": {"engine": "cosyvoice", "model": "m", "voice": "v", "rate": 3}},
                "default_voice": "a",
            },
            "voices.a.rate: must be a number 0.5-2",
        ),
        (
            {
                "voices": {"a": {"engine": "sambert", "model": "sambert-zhichu-v1", "voice": "x"}},
                "default_voice": "a",
            },
            "voices.a.voice: engine sambert does not use it",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "qwen",
                        "model": "qwen3-tts-flash-realtime",
                        "voice": "Cherry",
                        "seed": 1,
                    }
                },
                "default_voice": "a",
            },
            "voices.a.seed: engine qwen does not use it (only cosyvoice)",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "qwen",
                        "model": "qwen3-tts-flash-realtime",
                        "voice": "Cherry",
                        "mode": "auto",
                    }
                },
                "default_voice": "a",
            },
            "voices.a.mode: must be one of commit, server_commit",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "qwen",
                        "model": "qwen3-tts-flash-realtime",
                        "voice": "Cherry",
                        "language_type": "Klingon",
                    }
                },
                "default_voice": "a",
            },
            "voices.a.language_type: must be one of Auto, Chinese, English",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "qwen",
                        "model": "qwen3-tts-flash-realtime",
                        "voice": "Cherry",
                        "volume": 101,
                    }
                },
                "default_voice": "a",
            },
            "voices.a.volume: must be an integer 0-100",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "qwen",
                        "model": "qwen3-tts-instruct-flash-realtime",
                        "voice": "Cherry",
                        "optimize_instructions": "yes",
                    }
                },
                "default_voice": "a",
            },
            "voices.a.optimize_instructions: must be true or false",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "cosyvoice",
                        "model": "qwen3-tts-flash-realtime",
                        "voice": "Cherry",
                    }
                },
                "default_voice": "a",
            },
            "voices.a.model: qwen3-tts-flash-realtime is a qwen model, not cosyvoice: "
            "set engine: qwen",
        ),
        (
            {"voices": {"a": {"engine": "sambert"}}, "default_voice": "a"},
            "voices.a.model: is required for engine sambert",
        ),
        (
            {
                "voices": {
                    "a": {
                        "engine": "cosyvoice",
                        "model": "cosyvoice-v2",
                        "voice": "v",
                        "seed": 70000,
                    }
                },
                "default_voice": "a",
            },
            "voices.a.seed: must be an integer 0-65535",
        ),
        (
            {"voices": {"a": {"engine": "piper", "rate": 1.2}}, "default_voice": "a"},
            "voices.a.rate: engine piper does not use it",
        ),
        ({"default_voice": "nobody"}, "default_voice: names no voice in voices"),
        ({"audio": {"sample_rate": 12345}}, "audio.sample_rate: must be one of"),
        (
            {"audio": {"device": True}},
            "audio.device: must be an ALSA device name or a device index",
        ),
        ({"device": {"name": "a/b"}}, "device.name: must not contain '/'"),
        ({"announcements": {"max_chars": 0}}, "announcements.max_chars: must be an integer"),
        ([1, 2], "config: must be a mapping"),
    ],
)
def test_bad_values_are_refused_with_key_path_and_reason(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert str(refused.value).startswith(message)


@given(st.one_of(st.integers(), st.text(), st.floats(allow_nan=False), st.booleans(), st.none()))
def test_any_port_value_is_accepted_or_refused_by_name(value: object) -> None:
    try:
        config = parse_config({"mqtt": {"port": value}})
    except ConfigError as exc:
        assert str(exc) == "mqtt.port: must be an integer 1-65535"
    else:
        assert value is None or (isinstance(value, int) and 1 <= value <= 65535)
        assert 1 <= config.mqtt.port <= 65535


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_arbitrary_yaml_never_escapes_as_anything_but_config_error(data: object) -> None:
    try:
        parse_config({"mqtt": data, "voices": data, "audio": data})
    except ConfigError:
        pass


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  port: [1883\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+"):
        load_config(str(path), {})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(str(tmp_path / "nope.yaml"), {})


def test_region_picks_the_documented_urls() -> None:
    cn = parse_config({"dashscope": {"region": "cn"}}).dashscope
    assert cn.inference_url == "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
    assert cn.realtime_url == "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
    intl = parse_config({}).dashscope
    assert intl.inference_url == "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference"
    assert intl.realtime_url == "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"
    custom = parse_config(
        {
            "dashscope": {
                "region": "cn",
                "inference_url": "ws://127.0.0.1:9/api-ws/v1/inference",
                "realtime_url": "ws://127.0.0.1:9/api-ws/v1/realtime",
            }
        }
    )
    assert custom.dashscope.inference_url == "ws://127.0.0.1:9/api-ws/v1/inference"
    assert custom.dashscope.realtime_url == "ws://127.0.0.1:9/api-ws/v1/realtime"


def test_every_documented_voice_profile_field_is_read() -> None:
    config = parse_config(
        {
            "default_voice": "q",
            "voices": {
                "q": {
                    "engine": "qwen",
                    "model": "qwen3-tts-instruct-flash-realtime",
                    "voice": "Serena",
                    "rate": 1.5,
                    "pitch": 0.7,
                    "volume": 80,
                    "instructions": "Brisk",
                    "optimize_instructions": True,
                    "language_type": "German",
                    "mode": "server_commit",
                },
                "s": {"engine": "sambert", "model": "sambert-zhichu-v1", "rate": 0.5, "pitch": 2.0},
                "c": {
                    "engine": "cosyvoice",
                    "model": "cosyvoice-v3.5-plus",
                    "voice": "cosyvoice-v3.5-plus-x",
                    "seed": 65535,
                    "language_hints": "zh",
                    "instructions": "Slow",
                },
            },
        }
    )
    q, s, c = config.voices["q"], config.voices["s"], config.voices["c"]
    assert (
        q.rate,
        q.pitch,
        q.volume,
        q.instructions,
        q.optimize_instructions,
        q.language_type,
        q.mode,
    ) == (1.5, 0.7, 80, "Brisk", True, "German", "server_commit")
    assert (s.model, s.voice, s.rate, s.pitch) == ("sambert-zhichu-v1", None, 0.5, 2.0)
    assert (c.seed, c.language_hints, c.mode) == (65535, ("zh",), "commit")


def test_api_key_order_file_then_env_then_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dashscope-api-key").write_text("sk-cred\n")
    keyfile = tmp_path / "key"
    keyfile.write_text("  sk-file \n")
    env = {"DASHSCOPE_API_KEY": "sk-env", "CREDENTIALS_DIRECTORY": str(creds)}
    with_file = parse_config({"dashscope": {"api_key_file": str(keyfile)}}).dashscope
    plain = parse_config({}).dashscope
    assert load_api_key(with_file, env) == Secret("sk-file")
    assert load_api_key(plain, env) == Secret("sk-env")
    assert load_api_key(plain, {"CREDENTIALS_DIRECTORY": str(creds)}) == Secret("sk-cred")
    assert load_api_key(plain, {}) is None


def test_unreadable_key_file_is_refused_without_content(tmp_path: Path) -> None:
    ds = parse_config({"dashscope": {"api_key_file": str(tmp_path / "missing")}}).dashscope
    with pytest.raises(ConfigError, match=r"dashscope\.api_key_file: cannot read"):
        load_api_key(ds, {})


def test_secrets_never_show_themselves(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2")
    config = parse_config({"mqtt": {"username": "u", "password_file": str(pw)}})
    assert config.mqtt.password is not None and config.mqtt.password.reveal() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.mqtt.password)


def test_shipped_config_is_valid_yaml_with_comments() -> None:
    text = (ROOT / "config" / "edge-tts.yaml").read_text()
    assert isinstance(yaml.safe_load(text), dict)


# Every numeric key and its documented range: both ends are accepted, just past either end is
# refused with the key's path (a range check removed or off by one fails here).
RANGES = [
    ("mqtt", "port", 1, 65535, 1),
    ("mqtt", "keepalive_s", 5, 3600, 1),
    ("mqtt", "session_expiry_s", 0, 2**32 - 1, 1),
    ("dashscope", "idle_timeout_s", 2, 3600, 0.5),
    ("dashscope", "connect_timeout_s", 0.1, 60, 0.05),
    ("dashscope", "first_audio_timeout_s", 0.1, 120, 0.05),
    ("dashscope", "stall_timeout_s", 0.1, 120, 0.05),
    ("audio", "lead_in_ms", 0, 2000, 1),
    ("audio", "jitter_ms", 0, 1000, 1),
    ("audio", "keep_open_s", 0, 86400, 1),
    ("audio", "volume", 0, 100, 1),
    ("audio", "critical_min_volume", 0, 100, 1),
    ("quiet_hours", "volume", 0, 100, 1),
    ("cache", "max_mb", 0, 1_000_000, 1),
    ("fallback", "first_audio_ms", 100, 60_000, 1),
    ("fallback", "release_after_s", 0, 86400, 1),
    ("announcements", "max_chars", 1, 100_000, 1),
    ("announcements", "queue_size", 1, 10_000, 1),
    ("announcements", "dedupe_s", 0, 3600, 1),
    ("announcements", "max_age_s", 1, 7 * 86400, 1),
    ("announcements", "sync_ms", 0, 60_000, 1),
]


@pytest.mark.parametrize(
    ("section", "key", "lo", "hi", "step"), RANGES, ids=[f"{s}.{k}" for s, k, *_ in RANGES]
)
def test_each_range_holds_at_both_ends(
    section: str, key: str, lo: float, hi: float, step: float
) -> None:
    for ok in (lo, hi):
        parse_config({section: {key: ok}})
    for bad in (lo - step, hi + step):
        with pytest.raises(ConfigError, match=rf"^{section}\.{key}: must be"):
            parse_config({section: {key: bad}})


def test_named_chimes_are_wav_files_a_message_may_choose(tmp_path: Path) -> None:
    bell = tmp_path / "bell.wav"
    bell.write_bytes(b"RIFF")
    config = parse_config({"audio": {"chimes": {"bell": str(bell)}, "chime": "bell"}})
    assert config.audio.chimes == (("bell", str(bell)),) and config.audio.chime == "bell"
    for chimes, says in [
        (["bell"], "audio.chimes: must be a mapping of chime names to WAV files"),
        ({"builtin": str(bell)}, "audio.chimes.builtin: a chime name must be a non-empty string"),
        ({" ": str(bell)}, "audio.chimes. : a chime name must be a non-empty string"),
        ({"gone": str(tmp_path / "gone.wav")}, "audio.chimes.gone: no such WAV file"),
        ({"dir": str(tmp_path)}, "audio.chimes.dir: no such WAV file"),
    ]:
        with pytest.raises(ConfigError) as refused:
            parse_config({"audio": {"chimes": chimes}})
        assert str(refused.value).startswith(says), refused.value


def test_the_shipped_config_states_every_default_truly() -> None:
    """config/edge-tts.yaml is the documentation of every key "with its default": apart from
    the device's name and the example voices, it must say exactly what the code defaults to."""
    defaults = parse_config({})
    shipped = load_config(str(ROOT / "config" / "edge-tts.yaml"), {})
    for field in dataclasses.fields(defaults):
        if field.name not in ("device", "voices", "source"):
            assert getattr(defaults, field.name) == getattr(shipped, field.name), field.name
    assert defaults.voices["default"] == shipped.voices["default"]
    assert defaults.device.groups == shipped.device.groups == ()


def test_groups_name_topics_and_entities_so_they_are_checked() -> None:
    config = parse_config({"device": {"name": "den", "groups": ["downstairs", "all", "b-2"]}})
    assert config.device.groups == ("downstairs", "b-2")  # `all` is everyone's anyway
    assert config.device.all_groups == ("all", "downstairs", "b-2")
    assert parse_config({"device": {"groups": None}}).device.groups == ()
    for groups, says in [
        ("downstairs", "device.groups: must be a list of at most 32 group names"),
        ([f"g{i}" for i in range(33)], "device.groups: must be a list of at most 32"),
        (["up/stairs"], "device.groups: 'up/stairs' is not a group name: 1-40 of a-z"),
        (["#"], "device.groups: '#' is not a group name"),
        (["Upstairs"], "device.groups: 'Upstairs' is not a group name"),
        ([""], "device.groups: '' is not a group name"),
        ([3], "device.groups: 3 is not a group name"),
        (["x" * 41], "device.groups: 'xxxx"),
    ]:
        with pytest.raises(ConfigError) as refused:
            parse_config({"device": {"groups": groups}})
        assert str(refused.value).startswith(says), refused.value
