"""Voice profiles held against what the reference documents about each model (models.py):
combinations that cannot work, or not as configured. `edge-tts check` prints them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .config import Config, Voice
from .models import (
    COSYVOICE,
    COSYVOICE_INSTRUCTION_WEIGHT,
    INSTRUCTION_MODELS,
    QWEN,
    QWEN_INSTRUCT,
    QWEN_LEGACY,
    REGION_MODELS,
    REGION_NAMES,
    SAMBERT_MODEL,
    is_custom_cosyvoice_voice,
)
from .text import weight


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
        if not SAMBERT_MODEL.match(model):
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
