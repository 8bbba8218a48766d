"""Where an idle daemon's resident memory goes: each part the daemon loads, in the order it
loads it, as what it adds to a fresh interpreter's resident memory (MiB), median of n runs.

    .venv/bin/python bench/memory_budget.py [-n 5] [--python PY]

Each run is a fresh interpreter (--python: the one the daemon runs on, e.g. a venv of the
system's Python as `scripts/install` makes it; this tree's edge_tts on PYTHONPATH) that
imports the parts one after another (edge_tts compiled, as installed) and reads its VmRSS
after each. The first row is the
interpreter itself (the reference the others add to); the last is the sum, to compare with
`bench/footprint.py`'s idle figure for a running daemon (which adds its connections, tasks
and buffers). A part's figure includes the standard library modules it is first to import.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from harness import ROOT, Row, compiled, table

# (what, the modules it is, or "!" and what it makes)
PARTS: list[tuple[str, list[str]]] = [
    # First, as in the daemon. Its row carries what it imports (pathlib, re, typing,
    # threading), which the rows below need too.
    ("edge_tts itself, with pathlib, re, typing", ["edge_tts"]),
    ("asyncio, with ssl (OpenSSL)", ["asyncio"]),
    # What edge_tts/keeper.py makes once: the system's authorities looked up, not read whole.
    ("the cloud's TLS context", ["!ssl.create_default_context(capath='/etc/ssl/certs')"]),
    ("logging, argparse, json, datetime", ["logging", "argparse", "json", "datetime"]),
    ("MQTT: aiomqtt, paho", ["aiomqtt"]),
    ("PyYAML", ["yaml"]),
    ("websockets", ["websockets.asyncio.client"]),
    ("wyoming", ["wyoming.event", "wyoming.info", "wyoming.tts", "wyoming.audio"]),
    ("zeroconf (Home Assistant's discovery)", ["zeroconf.asyncio"]),
    ("edge_tts's own modules", ["edge_tts.__main__", "edge_tts.daemon"]),
    ("sounddevice: PortAudio, ALSA, JACK, initialised", ["sounddevice"]),
]

PROBE = """
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
values = [rss()]
kept = []
for modules in json.loads(sys.argv[1]):
    for m in modules:
        if m.startswith("!"):  # a statement; what it makes is kept
            import ssl
            kept.append(eval(m[1:]))
        else:
            importlib.import_module(m)
    values.append(rss())
print(json.dumps(values))
"""


def one_run(python: str) -> list[float]:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        # The default ALSA device a file, as on a speakerless CI machine (bench/harness.py).
        ALSA_CONFIG_PATH=str(ROOT / "tests" / "alsa" / "capture.conf"),
        EDGE_TTS_ALSA_CAPTURE="/dev/null",
    )
    argv = [python, "-c", PROBE, json.dumps([modules for _, modules in PARTS])]
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, check=True)
    return [float(v) for v in json.loads(out.stdout)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--python", default=sys.executable, help="the interpreter to measure")
    args = p.parse_args()
    compiled(ROOT, args.python)
    runs = [one_run(args.python) for _ in range(args.n)]
    rows = [Row("the interpreter, started (MiB)", [r[0] for r in runs])]
    rows += [
        Row(f"+ {what} (MiB)", [r[i + 1] - r[i] for r in runs]) for i, (what, _) in enumerate(PARTS)
    ]
    rows.append(Row("all of it (MiB)", [r[-1] for r in runs]))
    print(table(f"What an idle daemon's parts cost ({args.python})", rows))


if __name__ == "__main__":
    main()
