"""edge-tts: speaks Home Assistant's MQTT announcements through Alibaba Cloud real-time TTS."""

__version__ = "0.1.0"
