"""What the reference documentation says about each model: its family, the regions that
offer it, and what it supports. `check` warns about combinations that cannot work."""

from __future__ import annotations

import re

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
# language_type's values, and the language code Home Assistant matches each against.
QWEN_LANGUAGE_CODES = {
    "Chinese": "zh",
    "English": "en",
    "German": "de",
    "Italian": "it",
    "Portuguese": "pt",
    "Spanish": "es",
    "Japanese": "ja",
    "Korean": "ko",
    "French": "fr",
    "Russian": "ru",
}
QWEN_LANGUAGES = ("Auto", *QWEN_LANGUAGE_CODES)
QWEN_MODES = ("commit", "server_commit")
# CosyVoice: text limits per continue-task and per task (service characters).
COSYVOICE_TEXT_WEIGHT = 20_000
COSYVOICE_TASK_WEIGHT = 200_000

SAMBERT_MODEL = re.compile(r"^sambert-[a-z0-9-]+-v\d+$")


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


# The languages each family speaks, as the reference lists them ("Supported languages"), as
# the codes Home Assistant matches an Assist pipeline's language against.
COSYVOICE_LANGUAGES = ("zh", "en", "fr", "de", "ja", "ko", "ru")
COSYVOICE_35_LANGUAGES = (*COSYVOICE_LANGUAGES, "pt", "th", "id", "vi")
SAMBERT_LANGUAGES = ("zh", "en")


def languages(
    engine: str, model: str | None, hints: tuple[str, ...], language_type: str | None
) -> list[str]:
    """The languages a voice profile speaks: what it is told to (language_hints,
    language_type), else what its model speaks; a Piper voice's from its file name
    (en_US-joe-medium.onnx: en_US, and en: the cloud voices say en, and an English Assist
    pipeline of Home Assistant's (2026.11) offers only voices that say it too)."""
    if hints:
        return list(hints)
    if engine == "qwen":
        if language_type in QWEN_LANGUAGE_CODES:
            return [QWEN_LANGUAGE_CODES[language_type]]
        return list(QWEN_LANGUAGE_CODES.values())
    if engine == "cosyvoice":
        v35 = model is not None and model.startswith("cosyvoice-v3.5")
        return list(COSYVOICE_35_LANGUAGES if v35 else COSYVOICE_LANGUAGES)
    if engine == "sambert":
        return list(SAMBERT_LANGUAGES)
    name = (model or "en_US-joe-medium").rsplit("/", 1)[-1]
    code = name.split("-", 1)[0]
    if not re.fullmatch(r"[a-z]{2,3}(_[A-Z]{2})?", code):
        return ["en"]
    return list(dict.fromkeys([code, code.split("_")[0]]))


# US dollars per 10,000 billed characters, international deployment, as the CosyVoice
# documentation lists them ("Models and prices", alibabacloud.com/help/model-studio/
# cosyvoice-python-sdk, 2026-01). A model not listed here has no estimate.
PRICES_PER_10K = {
    "cosyvoice-v3-plus": 0.286706,
    "cosyvoice-v3-flash": 0.14335,
    "cosyvoice-v2": 0.286706,
}
