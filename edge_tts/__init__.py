"""edge-tts: speaks Home Assistant's MQTT announcements through Alibaba Cloud real-time TTS."""

from . import lean

__version__ = "0.1.0"

# Before any library edge_tts uses is imported: what they import and never use waits.
lean.defer()
