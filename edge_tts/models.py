"""What the reference documentation says about each model: its family, the regions that
offer it, and what it supports. `check` warns about combinations that cannot work."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .text import weight

if TYPE_CHECKING:
    from .config import Config, Voice

COSYVOICE = (
    "cosyvoice-v2",
    "cosyvoice-v3-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3.5-plus",
)
# Stable names and their snapshots, as listed under "Supported regions".
QWEN_INSTRUCT = (
    "qwen3-tts-instruct-flash-realtime",
    "qwen3-tts-instruct-flash-realtime-2026-01-22",
)
QWEN_VD = ("qwen3-tts-vd-realtime-2026-01-15", "qwen3-tts-vd-realtime-2025-12-16")
QWEN_VC = ("qwen3-tts-vc-realtime-2026-01-15", "qwen3-tts-vc-realtime-2025-11-27")
QWEN_FLASH = (
    "qwen3-tts-flash-realtime",
    "qwen3-tts-flash-realtime-2025-11-27",
    "qwen3-tts-flash-realtime-2025-09-18",
)
QWEN_LEGACY = ("qwen-tts-realtime", "qwen-tts-realtime-latest", "qwen-tts-realtime-2025-07-15")
QWEN = QWEN_INSTRUCT + QWEN_VD + QWEN_VC + QWEN_FLASH + QWEN_LEGACY

REGION_MODELS = {
    "intl": (
        "cosyvoice-v3-plus",
        "cosyvoice-v3-flash",
        *QWEN_INSTRUCT,
        *QWEN_VD,
        *QWEN_VC,
        *QWEN_FLASH,
    ),
    "cn": COSYVOICE + QWEN,
}
REGION_NAMES = {"intl": "International (Singapore)", "cn": "Chinese mainland (Beijing)"}

# Instruction-based control (reference: "Instruction-based control: Supported models").
INSTRUCTION_MODELS = (
    "cosyvoice-v3.5-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3-flash",
    *QWEN_INSTRUCT,
)
SSML_MODELS = ("cosyvoice-v3-flash", "cosyvoice-v3-plus")
COSYVOICE_INSTRUCTION_WEIGHT = 100  # CJK ideographs count two
# Qwen-TTS Realtime (the first generation) speaks only at 24 kHz and has no rate, pitch or
# volume; the Qwen3 models offer these PCM rates.
QWEN_RATES = (8000, 16000, 24000, 48000)
QWEN_LANGUAGES = (
    "Auto",
    "Chinese",
    "English",
    "German",
    "Italian",
    "Portuguese",
    "Spanish",
    "Japanese",
    "Korean",
    "French",
    "Russian",
)
QWEN_MODES = ("commit", "server_commit")
# CosyVoice: text limits per continue-task and per task (service characters).
COSYVOICE_TEXT_WEIGHT = 20_000
COSYVOICE_TASK_WEIGHT = 200_000

_SAMBERT = re.compile(r"^sambert-[a-z0-9-]+-v\d+$")


def family(model: str) -> str | None:
    """cosyvoice | qwen | sambert for a model name that looks like one of theirs."""
    if model.startswith("cosyvoice-"):
        return "cosyvoice"
    if model.startswith(("qwen3-tts-", "qwen-tts-")):
        return "qwen"
    if model.startswith("sambert-"):
        return "sambert"
    return None


def qwen_rate(model: str, wanted: int) -> int:
    """The PCM rate to ask a Qwen model for, given the output rate wanted."""
    if model in QWEN_LEGACY:
        return 24000
    if wanted in QWEN_RATES:
        return wanted
    return 48000 if wanted > 24000 else 24000  # 22050 → 24000, 44100 → 48000: resampled


def is_custom_cosyvoice_voice(voice: str) -> bool:
    """Cloned and designed CosyVoice voices are named after their target model."""
    return voice.startswith("cosyvoice-")


@dataclass(frozen=True)
class Warning_:
    where: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def warnings(config: Config) -> Iterator[Warning_]:
    """Voice profiles the reference says cannot work, or not as configured."""
    region = config.dashscope.region
    custom_urls = (config.dashscope.inference_url, config.dashscope.realtime_url)
    for voice in config.voices.values():
        yield from _voice_warnings(voice, region, custom_urls)


def _voice_warnings(v: Voice, region: str, urls: tuple[str, str]) -> Iterator[Warning_]:
    where = f"voices.{v.name}"
    if v.engine == "piper" or v.model is None:
        return
    model = v.model
    known = COSYVOICE if v.engine == "cosyvoice" else QWEN if v.engine == "qwen" else ()
    if v.engine == "sambert":
        if not _SAMBERT.match(model):
            yield Warning_(
                f"{where}.model",
                f"{model!r} does not look like a Sambert model (sambert-<voice>-v1)",
            )
        if region != "cn":
            yield Warning_(
                f"{where}.model",
                "Sambert is not among the models of the "
                f"{REGION_NAMES[region]} region; use region cn",
            )
    elif model not in known:
        yield Warning_(
            f"{where}.model",
            f"{model!r} is not a {v.engine} model the reference lists ({', '.join(known)})",
        )
    elif model not in REGION_MODELS[region]:
        offered = [r for r, models in REGION_MODELS.items() if model in models]
        yield Warning_(
            f"{where}.model",
            f"the {REGION_NAMES[region]} region does not offer "
            f"{model}" + (f"; region {offered[0]} does" if offered else ""),
        )
    if v.instructions and model not in INSTRUCTION_MODELS and model in known:
        yield Warning_(
            f"{where}.instructions",
            f"{model} takes no instructions; models that do: {', '.join(INSTRUCTION_MODELS)}",
        )
    if v.engine == "cosyvoice":
        if (
            model.startswith("cosyvoice-v3.5")
            and v.voice
            and not is_custom_cosyvoice_voice(v.voice)
        ):
            yield Warning_(
                f"{where}.voice",
                f"{model} has no system voices; {v.voice!r} looks "
                "like one (use a cloned or designed voice id)",
            )
        if v.instructions and weight(v.instructions) > COSYVOICE_INSTRUCTION_WEIGHT:
            yield Warning_(
                f"{where}.instructions",
                "longer than CosyVoice's 100 characters (a Chinese character counts two)",
            )
    if v.engine == "qwen":
        if model in QWEN_LEGACY and (v.rate, v.pitch, v.volume) != (1.0, 1.0, 50):
            yield Warning_(where, f"{model} ignores rate, pitch and volume")
        if model in QWEN_LEGACY and v.language_type not in (None, "Auto", "Chinese", "English"):
            yield Warning_(f"{where}.language_type", f"{model} speaks only Chinese and English")
        if v.optimize_instructions and model not in QWEN_INSTRUCT:
            yield Warning_(
                f"{where}.optimize_instructions", f"only the instruct models use it, not {model}"
            )
