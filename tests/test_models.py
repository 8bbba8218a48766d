"""`check`'s warnings: voice profiles the reference documentation says cannot work."""

from __future__ import annotations

from typing import Any

import pytest

from edge_tts.config import parse_config
from edge_tts.models import qwen_rate
from edge_tts.profiles import warnings


def warned(voice: dict[str, Any], region: str = "intl") -> list[str]:
    config = parse_config(
        {"dashscope": {"region": region}, "default_voice": "v", "voices": {"v": voice}}
    )
    return [str(w) for w in warnings(config)]


@pytest.mark.parametrize(
    ("voice", "region", "expected"),
    [
        (
            {"engine": "cosyvoice", "model": "cosyvoice-v3.5-plus", "voice": "longanyang"},
            "cn",
            "voices.v.voice: cosyvoice-v3.5-plus has no system voices",
        ),
        (
            {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3.5-flash",
                "voice": "cosyvoice-v3.5-flash-me-1",
            },
            "intl",
            "voices.v.model: the International (Singapore) region does not offer "
            "cosyvoice-v3.5-flash; region cn does",
        ),
        (
            {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3-plus",
                "voice": "longanyang",
                "instructions": "Calm",
            },
            "intl",
            "voices.v.instructions: cosyvoice-v3-plus takes no instructions",
        ),
        (
            {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3-flash",
                "voice": "longanyang",
                "instructions": "慢" * 51,
            },
            "intl",
            "voices.v.instructions: longer than CosyVoice's 100",
        ),
        (
            {
                "engine": "qwen",
                "model": "qwen3-tts-flash-realtime",
                "voice": "Cherry",
                "instructions": "Calm",
            },
            "intl",
            "voices.v.instructions: qwen3-tts-flash-realtime takes no",
        ),
        (
            {"engine": "qwen", "model": "qwen-tts-realtime", "voice": "Cherry"},
            "intl",
            "voices.v.model: the International (Singapore) region does not offer qwen-tts-realtime",
        ),
        (
            {"engine": "qwen", "model": "qwen-tts-realtime", "voice": "Cherry", "rate": 1.5},
            "cn",
            "voices.v: qwen-tts-realtime ignores rate, pitch and volume",
        ),
        (
            {
                "engine": "qwen",
                "model": "qwen3-tts-flash-realtime",
                "voice": "Cherry",
                "optimize_instructions": True,
            },
            "intl",
            "voices.v.optimize_instructions: only the instruct",
        ),
        (
            {"engine": "qwen", "model": "qwen3-tts-flash", "voice": "Cherry"},
            "intl",
            "voices.v.model: 'qwen3-tts-flash' is not a qwen model the reference lists",
        ),
        (
            {"engine": "sambert", "model": "sambert-zhichu-v1"},
            "intl",
            "voices.v.model: Sambert is not among the models of the International "
            "(Singapore) region",
        ),
    ],
)
def test_impossible_combinations_are_warned_about(
    voice: dict[str, Any], region: str, expected: str
) -> None:
    assert any(w.startswith(expected) for w in warned(voice, region)), warned(voice, region)


@pytest.mark.parametrize(
    ("voice", "region"),
    [
        (
            {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3-flash",
                "voice": "longanyang",
                "instructions": "Calm and slow",
            },
            "intl",
        ),
        (
            {
                "engine": "cosyvoice",
                "model": "cosyvoice-v3.5-plus",
                "voice": "cosyvoice-v3.5-plus-me-1",
                "instructions": "Calm",
            },
            "cn",
        ),
        (
            {
                "engine": "qwen",
                "model": "qwen3-tts-instruct-flash-realtime-2026-01-22",
                "voice": "Cherry",
                "instructions": "Calm",
                "optimize_instructions": True,
            },
            "intl",
        ),
        (
            {"engine": "qwen", "model": "qwen3-tts-vc-realtime-2026-01-15", "voice": "my-clone"},
            "intl",
        ),
        ({"engine": "qwen", "model": "qwen-tts-realtime-latest", "voice": "Cherry"}, "cn"),
        ({"engine": "sambert", "model": "sambert-zhichu-v1"}, "cn"),
        ({"engine": "piper"}, "intl"),
    ],
)
def test_documented_combinations_pass_quietly(voice: dict[str, Any], region: str) -> None:
    assert warned(voice, region) == []


def test_qwen_rates() -> None:
    assert qwen_rate("qwen3-tts-flash-realtime", 16000) == 16000
    assert qwen_rate("qwen3-tts-flash-realtime", 22050) == 24000
    assert qwen_rate("qwen3-tts-flash-realtime", 44100) == 48000
    assert qwen_rate("qwen-tts-realtime", 48000) == 24000
