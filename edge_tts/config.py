"""Configuration: YAML → validated, typed, frozen dataclasses; errors name the key path."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from . import models
from .errors import ConfigError
from .secret import Secret

DEFAULT_CONFIG_PATHS = (Path("/etc/edge-tts/config.yaml"), Path("config/edge-tts.yaml"))

REGION_URLS = {
    "intl": (
        "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference",
        "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime",
    ),
    "cn": (
        "wss://dashscope.aliyuncs.com/api-ws/v1/inference",
        "wss://dashscope.aliyuncs.com/api-ws/v1/realtime",
    ),
}


class EngineName(StrEnum):
    """The speech engines a voice profile can name (`voices.<name>.engine`)."""

    COSYVOICE = "cosyvoice"
    QWEN = "qwen"
    SAMBERT = "sambert"
    PIPER = "piper"


ENGINES = tuple(EngineName)
CLOUD_INFERENCE = (EngineName.COSYVOICE, EngineName.SAMBERT)  # the kept inference connection
# PCM sample rates every documented model family offers.
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
API_KEY_CREDENTIAL = "dashscope-api-key"


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    # The groups this speaker belongs to (`<prefix>/group/<group>/say`); `all` is every
    # device's group and is not listed.
    groups: tuple[str, ...] = ()
    # Signs and checks the audio the members of a group share (the same on every member):
    # without it shared audio is played but never cached (see protocols/share.py).
    group_key: Secret | None = None

    @property
    def all_groups(self) -> tuple[str, ...]:
        return ("all", *self.groups)


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: Secret | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "edge-tts"
    discovery_prefix: str | None = "homeassistant"
    keepalive_s: int = 30
    session_expiry_s: int = 86400  # the broker keeps our subscriptions and queued messages


@dataclass(frozen=True)
class DashscopeConfig:
    region: str = "intl"
    inference_url: str = REGION_URLS["intl"][0]
    realtime_url: str = REGION_URLS["intl"][1]
    api_key_file: str | None = None
    keep_warm: bool = True
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    first_audio_timeout_s: float = 10.0
    stall_timeout_s: float = 5.0
    monthly_characters: int = 0  # past this many this month, the fallback voice speaks; 0: no cap


@dataclass(frozen=True)
class Voice:
    """A named voice profile: which engine speaks, with which model, voice and parameters."""

    name: str
    engine: str
    model: str | None = None
    voice: str | None = None
    rate: float = 1.0
    pitch: float = 1.0
    volume: int = 50
    instructions: str | None = None
    seed: int | None = None
    language_hints: tuple[str, ...] = ()
    language_type: str | None = None  # qwen
    mode: str = "commit"  # qwen: commit (we send sentence by sentence) | server_commit
    optimize_instructions: bool | None = None  # qwen instruct models


@dataclass(frozen=True)
class AudioConfig:
    device: str | int = "default"
    sample_rate: int = 24000
    chime: str | None = None  # builtin, a name from `chimes`, or a WAV path
    chimes: tuple[tuple[str, str], ...] = ()  # name -> WAV path: what a message may choose
    lead_in_ms: int = 120
    jitter_ms: int = 60
    keep_open_s: float = 10.0
    volume: int = 100  # for announcements that do not give one
    critical_min_volume: int = 80  # critical announcements are never quieter


@dataclass(frozen=True)
class QuietHours:
    """Windows of local time (start, end as minutes after midnight; end < start wraps past
    midnight) in which low and normal announcements are dropped or played quieter."""

    windows: tuple[tuple[int, int], ...] = ()
    action: str = "reduce"  # reduce | drop
    volume: int = 30


@dataclass(frozen=True)
class CacheConfig:
    dir: str = ""  # none named: the service's cache directory, or the user's (paths.cache_dir)
    max_mb: int = 200


@dataclass(frozen=True)
class WyomingConfig:
    """The Wyoming TTS server for Home Assistant's own voice (Assist, tts.speak)."""

    enabled: bool = True
    host: str = "0.0.0.0"  # every interface: anyone on the network can ask for speech
    port: int = 10200  # the Wyoming convention
    zeroconf: bool = True  # advertised as _wyoming._tcp, so Home Assistant finds it


@dataclass(frozen=True)
class AnnouncementsConfig:
    max_chars: int = 2000
    queue_size: int = 20  # when full, the least urgent and oldest are dropped
    dedupe_s: float = 10.0  # the same text again within this while queued or playing: once
    max_age_s: float = 900.0  # an announcement with "sent_at" older than this is not spoken
    speak_title: bool = True  # a message's "title" (a notify title) is said before its text
    # A group notify entity stamps `play_at` this far ahead of the moment Home Assistant sends
    # the message: time for a warm cloud's first audio to reach every member.
    sync_ms: int = 1000


@dataclass(frozen=True)
class FallbackConfig:
    first_audio_ms: int = 1500  # a cloud voice silent this long hands over to fallback_voice
    preload: bool = False  # load the offline model at start instead of on first use
    release_after_s: float = 300.0  # forget the offline model after this long unused


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    dashscope: DashscopeConfig = field(default_factory=DashscopeConfig)
    voices: Mapping[str, Voice] = field(default_factory=dict)
    default_voice: str = "default"
    fallback_voice: str | None = None
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    quiet_hours: QuietHours = field(default_factory=QuietHours)
    cache: CacheConfig = field(default_factory=CacheConfig)
    announcements: AnnouncementsConfig = field(default_factory=AnnouncementsConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    source: Path | None = None

    @property
    def fallback_profile(self) -> Voice | None:
        """The voice profile that speaks when a cloud voice cannot, if there is one."""
        return self.voices.get(self.fallback_voice) if self.fallback_voice else None


class _Section:
    """Reads one mapping of the YAML, checking each key's type and range against its path."""

    def __init__(self, data: Any, path: str, known: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: must be a mapping of keys to values")
        for key in data:
            if key not in known:
                import difflib  # a wrong key only: no running daemon holds it for nothing

                hint = difflib.get_close_matches(str(key), known, n=1)
                more = f" (did you mean {hint[0]}?)" if hint else f" (known: {', '.join(known)})"
                raise ConfigError(f"{self._join(path, str(key))}: unknown key{more}")
        self.data = data
        self.path = path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def where(self, key: str) -> str:
        return self._join(self.path, key)

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {reason}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None, *, choices: tuple[str, ...] = ()) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, f"must be an integer {lo}-{hi}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise self.fail(key, f"must be a number {lo:g}-{hi:g}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def section(self, key: str, known: tuple[str, ...]) -> _Section:
        return _Section(self.data.get(key), self.where(key), known)

    def read_file(self, key: str) -> str | None:
        """The stripped content of the file named by `key`, never echoed in errors."""
        name = self.text(key, None)
        if name is None:
            return None
        try:
            return Path(name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise self.fail(key, f"cannot read {name}: {reason}") from None


_MAX_GROUPS = 32
_GROUP_KEY_CHARS = 16
GROUP_NAME = re.compile(r"[a-z0-9_-]{1,40}")  # it names MQTT topics and an entity


def _device(root: _Section) -> DeviceConfig:
    s = root.section("device", ("name", "groups", "group_key", "group_key_file"))
    name = s.text("name", None) or socket.gethostname().split(".")[0] or "edge-tts"
    if any(c in name for c in "/#+") or not name.isprintable():
        raise s.fail("name", "must not contain '/', '#', '+' or control characters")
    raw = s.data.get("groups") or []
    if not isinstance(raw, list) or len(raw) > _MAX_GROUPS:
        raise s.fail("groups", f"must be a list of at most {_MAX_GROUPS} group names")
    groups: list[str] = []
    for group in raw:
        if not isinstance(group, str) or not GROUP_NAME.fullmatch(group):
            raise s.fail(
                "groups",
                f"{group!r} is not a group name: 1-40 of a-z, 0-9, '_' and '-' "
                "(it names MQTT topics and a Home Assistant entity)",
            )
        if group != "all" and group not in groups:  # `all` is every device's group anyway
            groups.append(group)
    if s.has("group_key") and s.has("group_key_file"):
        raise s.fail("group_key", "set either group_key or group_key_file, not both")
    key = s.read_file("group_key_file")
    named = "group_key_file" if key is not None else "group_key"
    if s.has("group_key"):
        raw = s.data["group_key"]
        key = raw if isinstance(raw, str) else None
        if key is None:
            raise s.fail("group_key", "must be a string")
    if key is not None and len(key) < _GROUP_KEY_CHARS:
        raise s.fail(
            named,
            f"must be at least {_GROUP_KEY_CHARS} characters (e.g. the output of "
            "`openssl rand -hex 16`), the same on every member",
        )
    return DeviceConfig(
        name=name, groups=tuple(groups), group_key=Secret(key) if key is not None else None
    )


def _mqtt(root: _Section) -> MqttConfig:
    s = root.section(
        "mqtt",
        (
            "host",
            "port",
            "username",
            "password",
            "password_file",
            "tls",
            "topic_prefix",
            "discovery_prefix",
            "keepalive_s",
            "session_expiry_s",
        ),
    )
    if s.has("password") and s.has("password_file"):
        raise s.fail("password", "set either password or password_file, not both")
    password = s.read_file("password_file")
    if s.has("password"):
        raw = s.data["password"]
        if not isinstance(raw, str | int):
            raise s.fail("password", "must be a string")
        password = str(raw)
    tls: TlsConfig | None = None
    raw_tls = s.data.get("tls", False)
    if raw_tls is True:
        tls = TlsConfig()
    elif isinstance(raw_tls, dict):
        t = s.section("tls", ("ca_file", "cert_file", "key_file"))
        for key in ("ca_file", "cert_file", "key_file"):
            name = t.text(key, None)
            if name is not None and not Path(name).is_file():
                raise t.fail(key, f"no such file: {name}")
        tls = TlsConfig(
            t.text("ca_file", None), t.text("cert_file", None), t.text("key_file", None)
        )
    elif raw_tls not in (False, None):
        raise s.fail("tls", "must be false, true, or a mapping with ca_file, cert_file, key_file")
    prefix = s.text("topic_prefix", "edge-tts") or "edge-tts"
    if any(c in prefix for c in "#+") or prefix.endswith("/"):
        raise s.fail("topic_prefix", "must not contain '#' or '+' or end with '/'")
    return MqttConfig(
        host=s.text("host", "localhost") or "localhost",
        port=s.integer("port", 1883, 1, 65535),
        username=s.text("username", None),
        password=Secret(password) if password is not None else None,
        tls=tls,
        topic_prefix=prefix,
        discovery_prefix=s.text("discovery_prefix", "homeassistant"),
        keepalive_s=s.integer("keepalive_s", 30, 5, 3600),
        session_expiry_s=s.integer("session_expiry_s", 86400, 0, 2**32 - 1),
    )


def _ws_url(s: _Section, key: str, default: str) -> str:
    url = s.text(key, None)
    if url is None:
        return default
    if not url.startswith(("ws://", "wss://")):
        raise s.fail(key, f"must be a ws:// or wss:// URL (got {url!r})")
    return url


def _dashscope(root: _Section) -> DashscopeConfig:
    s = root.section(
        "dashscope",
        (
            "region",
            "inference_url",
            "realtime_url",
            "api_key_file",
            "keep_warm",
            "idle_timeout_s",
            "connect_timeout_s",
            "first_audio_timeout_s",
            "stall_timeout_s",
            "monthly_characters",
        ),
    )
    region = s.text("region", "intl", choices=tuple(REGION_URLS)) or "intl"
    inference, realtime = REGION_URLS[region]
    return DashscopeConfig(
        region=region,
        inference_url=_ws_url(s, "inference_url", inference),
        realtime_url=_ws_url(s, "realtime_url", realtime),
        api_key_file=s.text("api_key_file", None),
        keep_warm=s.boolean("keep_warm", True),
        idle_timeout_s=s.number("idle_timeout_s", 60, 2, 3600),
        connect_timeout_s=s.number("connect_timeout_s", 5, 0.1, 60),
        first_audio_timeout_s=s.number("first_audio_timeout_s", 10, 0.1, 120),
        stall_timeout_s=s.number("stall_timeout_s", 5, 0.1, 120),
        monthly_characters=s.integer("monthly_characters", 0, 0, 10**12),
    )


# The keys each engine reads; any other key in its profile is refused.
_VOICE_KEYS = {
    "cosyvoice": (
        "model",
        "voice",
        "rate",
        "pitch",
        "volume",
        "instructions",
        "seed",
        "language_hints",
    ),
    "qwen": (
        "model",
        "voice",
        "rate",
        "pitch",
        "volume",
        "instructions",
        "optimize_instructions",
        "language_type",
        "mode",
    ),
    "sambert": ("model", "rate", "pitch", "volume"),
    "piper": ("model",),
}


def _voice(s: _Section, name: str) -> Voice:
    everything = tuple(dict.fromkeys(k for keys in _VOICE_KEYS.values() for k in keys))
    v = s.section(name, ("engine", *everything))
    engine = v.text("engine", None, choices=ENGINES)
    if engine is None:
        raise v.fail("engine", f"is required: one of {', '.join(ENGINES)}")
    for key in v.data:
        if key != "engine" and key not in _VOICE_KEYS[engine]:
            users = [e for e, keys in _VOICE_KEYS.items() if key in keys]
            hint = (
                " (a Sambert voice is chosen by its model, e.g. sambert-zhichu-v1)"
                if engine == EngineName.SAMBERT and key == "voice"
                else ""
            )
            raise v.fail(key, f"engine {engine} does not use it (only {', '.join(users)}){hint}")
    required = {
        "cosyvoice": ("model", "voice"),
        "qwen": ("model", "voice"),
        "sambert": ("model",),
        "piper": (),
    }[engine]
    for key in required:
        if v.text(key, None) is None:
            raise v.fail(key, f"is required for engine {engine}")
    model = v.text("model", None)
    if engine != EngineName.PIPER and model is not None:
        found = models.family(model)
        if found is not None and found != engine:
            raise v.fail("model", f"{model} is a {found} model, not {engine}: set engine: {found}")
    hints = v.data.get("language_hints", [])
    if isinstance(hints, str):
        hints = [hints]
    if not isinstance(hints, list) or not all(isinstance(h, str) and h for h in hints):
        raise v.fail("language_hints", "must be a list of language codes such as [en]")
    seed = v.data.get("seed")
    if seed is not None:
        seed = v.integer("seed", 0, 0, 65535)
    optimize = v.data.get("optimize_instructions")
    if optimize is not None:
        optimize = v.boolean("optimize_instructions", False)
    return Voice(
        name=name,
        engine=engine,
        model=model,
        voice=v.text("voice", None),
        rate=v.number("rate", 1.0, 0.5, 2.0),
        pitch=v.number("pitch", 1.0, 0.5, 2.0),
        volume=v.integer("volume", 50, 0, 100),
        instructions=v.text("instructions", None),
        seed=seed,
        language_hints=tuple(hints),
        language_type=v.text("language_type", None, choices=models.QWEN_LANGUAGES),
        mode=v.text("mode", "commit", choices=models.QWEN_MODES) or "commit",
        optimize_instructions=optimize,
    )


def _voices(root: _Section) -> dict[str, Voice]:
    raw = root.data.get("voices")
    if raw is None:
        raw = {
            "default": {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3-flash",
                "voice": "longanyang",
            },
            "offline": {"engine": "piper"},
        }
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("voices: must be a mapping of voice names to voice profiles")
    s = _Section(raw, "voices", tuple(str(k) for k in raw))
    return {str(name): _voice(s, str(name)) for name in raw}


def _chimes(audio: _Section) -> tuple[tuple[str, str], ...]:
    """audio.chimes: the chimes a message may name, each a WAV file that exists now."""
    raw = audio.data.get("chimes")
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise audio.fail("chimes", "must be a mapping of chime names to WAV files")
    chimes = []
    for name, path in raw.items():
        where = f"{audio.where('chimes')}.{name}"
        if not isinstance(name, str) or not name.strip() or name == "builtin":
            raise ConfigError(
                f"{where}: a chime name must be a non-empty string other than builtin"
            )
        if not isinstance(path, str) or not Path(path).is_file():
            raise ConfigError(f"{where}: no such WAV file {path!r}")
        chimes.append((name, path))
    return tuple(chimes)


def _audio(root: _Section) -> AudioConfig:
    s = root.section(
        "audio",
        (
            "device",
            "sample_rate",
            "chime",
            "chimes",
            "lead_in_ms",
            "jitter_ms",
            "keep_open_s",
            "volume",
            "critical_min_volume",
        ),
    )
    device: str | int = s.data.get("device", "default")
    if isinstance(device, bool) or not isinstance(device, str | int) or device == "":
        raise s.fail("device", "must be an ALSA device name or a device index")
    rate = s.integer("sample_rate", 24000, 8000, 48000)
    if rate not in SAMPLE_RATES:
        raise s.fail("sample_rate", f"must be one of {', '.join(map(str, SAMPLE_RATES))}")
    chimes = _chimes(s)
    chime = s.text("chime", None)
    if chime not in (None, "builtin", *dict(chimes)) and not Path(str(chime)).is_file():
        raise s.fail(
            "chime", f"no such WAV file {chime!r} (or builtin, or a name from audio.chimes)"
        )
    return AudioConfig(
        device=device,
        sample_rate=rate,
        chime=chime,
        chimes=chimes,
        lead_in_ms=s.integer("lead_in_ms", 120, 0, 2000),
        jitter_ms=s.integer("jitter_ms", 60, 0, 1000),
        keep_open_s=s.number("keep_open_s", 10, 0, 86400),
        volume=s.integer("volume", 100, 0, 100),
        critical_min_volume=s.integer("critical_min_volume", 80, 0, 100),
    )


_WINDOW = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]):([0-5]\d)$")


def _quiet_hours(root: _Section) -> QuietHours:
    s = root.section("quiet_hours", ("windows", "action", "volume"))
    raw = s.data.get("windows", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise s.fail("windows", 'must be a list of "HH:MM-HH:MM" windows')
    windows = []
    for text in raw:
        m = _WINDOW.match(str(text).strip()) if isinstance(text, str) else None
        if not m:
            raise s.fail("windows", f'{text!r} is not a "HH:MM-HH:MM" window such as "22:00-07:00"')
        h1, m1, h2, m2 = map(int, m.groups())
        if (h1, m1) == (h2, m2):
            raise s.fail("windows", f'{text!r} ends where it starts (all day: "00:00-23:59")')
        windows.append((h1 * 60 + m1, h2 * 60 + m2))
    return QuietHours(
        windows=tuple(windows),
        action=s.text("action", "reduce", choices=("reduce", "drop")) or "reduce",
        volume=s.integer("volume", 30, 0, 100),
    )


def _cache(root: _Section) -> CacheConfig:
    s = root.section("cache", ("dir", "max_mb"))
    return CacheConfig(
        dir=s.text("dir", None) or "",
        max_mb=s.integer("max_mb", 200, 0, 1_000_000),
    )


def _wyoming(root: _Section) -> WyomingConfig:
    s = root.section("wyoming", ("enabled", "host", "port", "zeroconf"))
    return WyomingConfig(
        enabled=s.boolean("enabled", True),
        host=s.text("host", "0.0.0.0") or "0.0.0.0",
        port=s.integer("port", 10200, 1, 65535),
        zeroconf=s.boolean("zeroconf", True),
    )


def parse_config(data: Any, source: Path | None = None) -> Config:
    """Validate a parsed YAML document into a Config, or raise ConfigError naming the key."""
    root = _Section(
        data,
        "",
        (
            "device",
            "mqtt",
            "dashscope",
            "voices",
            "default_voice",
            "fallback_voice",
            "fallback",
            "audio",
            "quiet_hours",
            "cache",
            "announcements",
            "wyoming",
        ),
    )
    voices = _voices(root)
    default_voice = root.text("default_voice", "default") or "default"
    if default_voice not in voices:
        raise root.fail("default_voice", f"names no voice in voices (known: {', '.join(voices)})")
    # A voice named "offline" is the fallback unless the config says otherwise.
    fallback = root.text("fallback_voice", "offline" if "offline" in voices else None)
    if fallback is not None and fallback not in voices:
        raise root.fail("fallback_voice", f"names no voice in voices (known: {', '.join(voices)})")
    fb = root.section("fallback", ("first_audio_ms", "preload", "release_after_s"))
    ann = root.section(
        "announcements",
        ("max_chars", "queue_size", "dedupe_s", "max_age_s", "speak_title", "sync_ms"),
    )
    return Config(
        device=_device(root),
        mqtt=_mqtt(root),
        dashscope=_dashscope(root),
        voices=voices,
        default_voice=default_voice,
        fallback_voice=fallback,
        fallback=FallbackConfig(
            first_audio_ms=fb.integer("first_audio_ms", 1500, 100, 60_000),
            preload=fb.boolean("preload", False),
            release_after_s=fb.number("release_after_s", 300, 0, 86400),
        ),
        audio=_audio(root),
        quiet_hours=_quiet_hours(root),
        cache=_cache(root),
        announcements=AnnouncementsConfig(
            max_chars=ann.integer("max_chars", 2000, 1, 100_000),
            queue_size=ann.integer("queue_size", 20, 1, 10_000),
            dedupe_s=ann.number("dedupe_s", 10, 0, 3600),
            max_age_s=ann.number("max_age_s", 900, 1, 7 * 86400),
            speak_title=ann.boolean("speak_title", True),
            sync_ms=ann.integer("sync_ms", 1000, 0, 60_000),
        ),
        wyoming=_wyoming(root),
        source=source,
    )


def find_config(
    explicit: str | None,
    environ: Mapping[str, str],
    defaults: tuple[Path, ...] = DEFAULT_CONFIG_PATHS,
) -> Path | None:
    """-c FILE, else $EDGE_TTS_CONFIG, else the first of `defaults` that exists
    (/etc/edge-tts/config.yaml, then config/edge-tts.yaml)."""
    if explicit:
        return Path(explicit)
    if environ.get("EDGE_TTS_CONFIG"):
        return Path(environ["EDGE_TTS_CONFIG"])
    for path in defaults:
        if path.is_file():
            return path
    return None


def load_config(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: tuple[Path, ...] = DEFAULT_CONFIG_PATHS,
) -> Config:
    """Find, read and validate the config; with no file anywhere, the built-in defaults."""
    environ = os.environ if environ is None else environ
    path = find_config(explicit, environ, defaults)
    if path is None:
        return parse_config({})
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    return parse_config(data, source=path)


def load_api_key(dashscope: DashscopeConfig, environ: Mapping[str, str]) -> Secret | None:
    """dashscope.api_key_file, else $DASHSCOPE_API_KEY, else the systemd credential."""
    candidates: list[tuple[str, Path | None, str | None]] = []
    if dashscope.api_key_file:
        candidates.append(("dashscope.api_key_file", Path(dashscope.api_key_file), None))
    else:
        candidates.append(("DASHSCOPE_API_KEY", None, environ.get("DASHSCOPE_API_KEY")))
        creds = environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidates.append(("systemd credential", Path(creds) / API_KEY_CREDENTIAL, None))
    for label, path, value in candidates:
        if path is not None:
            try:
                value = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                if label.startswith("dashscope"):
                    reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                    raise ConfigError(f"{label}: cannot read {path}: {reason}") from None
                continue
        if value and value.strip():
            return Secret(value.strip())
    return None
