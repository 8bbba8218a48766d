# Convenience names for the scripts; each one sets up what is missing first.
.PHONY: setup run test check

setup:
	scripts/setup

run:
	scripts/run

test:
	scripts/test

check: setup
	.venv/bin/edge-tts check -c $${EDGE_TTS_CONFIG:-config/edge-tts.yaml}
