"""Command line: parse arguments, load config, call one function per command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

import aiomqtt
import yaml

from . import __version__, memory
from .announcement import Announcement, check_text
from .cache import PhraseCache, open_cache
from .config import Config, load_api_key, load_config
from .costs import Usage
from .daemon import Daemon
from .discovery import removal_messages
from .engines.cloud import build_engines
from .errors import BadAnnouncement, ConfigError
from .events import Event, EventKind
from .mqtt import describe_error, make_client, memberships, orphans
from .player import Discard, Player, WavWriter
from .secret import RedactSecrets, Secret
from .speaker import Speaker
from .systemd import Notifier, log_handler

log = logging.getLogger("edge_tts")


def setup_logging(verbose: bool, secrets: list[Secret]) -> RedactSecrets:
    handler = log_handler()
    redact = RedactSecrets(secrets)
    handler.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redact


def _secrets(config: Config, api_key: Secret | None) -> list[Secret]:
    secrets = (api_key, config.mqtt.password, config.device.group_key)
    return [s for s in secrets if s is not None]


async def _serve(
    args: argparse.Namespace, config: Config, api_key: Secret | None, redact: RedactSecrets
) -> None:
    daemon = Daemon(config, api_key, notifier=Notifier())
    memory.keep_for_good()
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        daemon.notifier.reloading()
        try:
            new = load_config(args.config)
            new_key = load_api_key(new.dashscope, os.environ)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            daemon.refuse_reload(str(exc))
            return
        redact.update(_secrets(new, new_key) + _secrets(daemon.config, api_key))
        await daemon.reload(new, new_key)

    def on_hangup() -> None:
        job = loop.create_task(reload())
        reloads.add(job)
        job.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await daemon.run()
    except asyncio.CancelledError:
        pass
    except Exception:
        # Something the daemon cannot go on without broke. run() has said offline and closed
        # what it could; end now, without waiting for worker threads (a playback in progress
        # could hold the process for a minute), so systemd restarts it at once.
        log.critical("edge-tts cannot go on and stops to be restarted", exc_info=True)
        logging.shutdown()
        os._exit(70)  # EX_SOFTWARE
    log.info("stopped")


def cmd_serve(
    args: argparse.Namespace, config: Config, api_key: Secret | None, redact: RedactSecrets
) -> int:
    log.info(
        "edge-tts %s serving device %r (config %s)",
        __version__,
        config.device.name,
        config.source or "built-in defaults",
    )
    asyncio.run(_serve(args, config, api_key, redact))
    return 0


async def _say(
    config: Config, api_key: Secret | None, text: str, voice: str | None, out: Path | None
) -> int:
    usage = Usage.for_device(config.device.name, config.dashscope.monthly_characters)
    cloud = build_engines(config, api_key, serving=False, meter=usage.add)
    sink = WavWriter(out, config.audio.sample_rate) if out else Player(config.audio)
    failures: list[str] = []

    def report(event: Event, _: Announcement | None) -> None:
        if event.event == EventKind.FAILED and event.error:
            failures.append(event.error)

    cache = open_cache(config.cache)
    speaker = Speaker(config, cloud.engines, sink, report, cache, budget=usage.exhausted)
    try:
        await speaker.speak(Announcement(text=text, voice=voice))
    finally:
        await cloud.close()
        await sink.close()
        if cache is not None:
            cache.flush_counts()
        usage.flush()
    for reason in failures:
        print(f"edge-tts: {reason}", file=sys.stderr)
    return 1 if failures else 0


def _check_voice(name: str | None, config: Config) -> None:
    """A -v VOICE that names no voice profile is refused, saying which exist."""
    if name is not None and name not in config.voices:
        raise ConfigError(f"unknown voice {name!r} (known: {', '.join(config.voices)})")


def cmd_say(args: argparse.Namespace, config: Config, api_key: Secret | None) -> int:
    _check_voice(args.voice, config)
    try:
        text = check_text(" ".join(args.text), config.announcements.max_chars)
    except BadAnnouncement as exc:
        print(f"edge-tts: {exc.reason}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else None
    return asyncio.run(_say(config, api_key, text, args.voice, out))


def cmd_check(args: argparse.Namespace, config: Config, api_key: Secret | None) -> int:
    if args.config_only:  # main() has loaded and validated both already
        print(f"config: {config.source or 'built-in defaults'} is valid")
        return 0
    from .checks import run_checks  # the checks' clients (Wyoming's, ctypes) not in `serve`

    problems = asyncio.run(run_checks(config, api_key, print))
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


def _phrases(path: Path) -> list[str]:
    """A YAML list of phrases, or a text file with one per line (# starts a comment)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ConfigError(f"{path}: must be a YAML list of phrases")
        return [p for p in data if p.strip()]
    return [
        line
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


async def _warm(
    config: Config,
    api_key: Secret | None,
    cache: PhraseCache,
    phrases: list[str],
    voice: str | None,
) -> int:
    usage = Usage.for_device(config.device.name, config.dashscope.monthly_characters)
    cloud = build_engines(config, api_key, serving=False, meter=usage.add)
    failed = 0

    def report(event: Event, a: Announcement | None) -> None:
        nonlocal failed
        if event.event == EventKind.FAILED:
            failed += 1
            print(f"  failed: {a.text if a else ''!r}: {event.error}", file=sys.stderr)

    counted = cache.stats()
    speaker = Speaker(config, cloud.engines, Discard(), report, cache, budget=usage.exhausted)
    try:
        for phrase in phrases:
            await speaker.speak(Announcement(text=phrase, voice=voice))
    finally:
        await cloud.close()
        cache.flush_counts()
        usage.flush()
    after = cache.stats()
    new = after.misses - counted.misses - failed
    print(
        f"{len(phrases)} phrases: {new} synthesized and cached, "
        f"{after.hits - counted.hits} already cached, {failed} failed"
    )
    return 1 if failed else 0


def cmd_cache(args: argparse.Namespace, config: Config, api_key: Secret | None) -> int:
    cache = open_cache(config.cache)
    if cache is None:
        print("edge-tts: the cache is off (cache.max_mb: 0) or cannot be written", file=sys.stderr)
        return 1
    if args.action == "stats":
        st = cache.stats()

        def when(t: float | None) -> str:
            return datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds") if t else "-"

        rate = f"{st.hit_rate:.0%}" if st.hit_rate is not None else "-"
        print(
            f"cache      {cache.root}\n"
            f"entries    {st.entries}\n"
            f"size       {st.bytes / 2**20:.1f} MB of {st.max_bytes / 2**20:.0f} MB\n"
            f"hits       {st.hits}\n"
            f"misses     {st.misses}\n"
            f"hit rate   {rate}\n"
            f"oldest     {when(st.oldest)}\n"
            f"newest     {when(st.newest)}"
        )
        return 0
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.root}")
        return 0
    _check_voice(args.voice, config)
    if not args.file:
        raise ConfigError("cache warm needs a FILE of phrases")
    phrases = [check_text(p, config.announcements.max_chars) for p in _phrases(Path(args.file))]
    return asyncio.run(_warm(config, api_key, cache, phrases, args.voice))


def cmd_discovery(args: argparse.Namespace, config: Config, api_key: Secret | None) -> int:
    if not removal_messages(config):
        print("edge-tts: discovery is off (mqtt.discovery_prefix is null)", file=sys.stderr)
        return 1
    me = config.device.name

    async def publish() -> tuple[int, list[str], list[str]]:
        async with make_client(config.mqtt, timeout=10) as client:
            others = await memberships(client, config.mqtt.topic_prefix, me)
            groups = config.device.all_groups
            gone = orphans(groups, others)
            messages = removal_messages(config, orphans=gone)
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1, retain=True)
        entities = sum(1 for topic, _ in messages if topic.endswith("/config"))
        kept = [g for g in groups if g not in gone]
        sharing = sorted(d for d, of in others.items() if of is None or of & set(kept))
        return entities, sharing, kept

    broker = f"{config.mqtt.host}:{config.mqtt.port}"
    try:
        entities, sharing, kept = asyncio.run(publish())
    except aiomqtt.MqttError as exc:
        print(f"edge-tts: broker {broker}: {describe_error(exc)}", file=sys.stderr)
        return 1
    except TimeoutError:
        # The probe never came back: the broker's ACL refuses this client its own topics.
        print(
            f"edge-tts: broker {broker} did not pass on a message to "
            f"{config.mqtt.topic_prefix}/{me}/… within 10 s: nothing was removed (may this "
            "client publish and subscribe there? check the broker's ACL)",
            file=sys.stderr,
        )
        return 1
    print(
        f"removed {entities} Home Assistant entities of device {me!r} and "
        "its retained availability, state and stats (they come back when the daemon next "
        "connects; set mqtt.discovery_prefix: null to keep them away)"
    )
    if kept:
        shown = ", ".join(sharing[:5]) + (" and more" if len(sharing) > 5 else "")
        print(f"the entities of {', '.join(kept)} stay: other devices are in them ({shown})")
    if len(kept) < len(config.device.all_groups):
        print("the entities of its groups no other device is in are removed too")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    try:
        import sounddevice as sd
    except OSError as exc:
        print(
            f"edge-tts: PortAudio is not installed ({exc}); apt install libportaudio2",
            file=sys.stderr,
        )
        return 1
    default_out = sd.default.device[1]
    found = 0
    for index, dev in enumerate(sd.query_devices()):
        if dev["max_output_channels"] > 0:
            found += 1
            mark = "*" if index == default_out else " "
            hostapi = sd.query_hostapis(dev["hostapi"])["name"]
            print(
                f"{mark}{index:3d}  {dev['name']}  ({hostapi}, {dev['max_output_channels']} ch, "
                f"{dev['default_samplerate']:.0f} Hz)"
            )
    if not found:
        print("no audio output devices found", file=sys.stderr)
        return 1
    return 0


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's own."""
    p = argparse.ArgumentParser(prog="edge-tts", description=__doc__)
    p.add_argument("--version", action="version", version=f"edge-tts {__version__}")
    p.add_argument("--verbose", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="command", required=True)

    commands: dict[str, argparse.ArgumentParser] = {}

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        cmd = commands[name] = sub.add_parser(name, help=help)
        cmd.add_argument(
            "-c",
            "--config",
            help="config file (default: $EDGE_TTS_CONFIG, "
            "/etc/edge-tts/config.yaml, config/edge-tts.yaml)",
        )
        cmd.add_argument("--verbose", action="store_true", help="log debug detail")
        return cmd

    with_config("serve", "run the daemon in the foreground")
    say = with_config("say", "speak once through the same path as the daemon")
    say.add_argument("-v", "--voice", help="voice profile name (default: default_voice)")
    say.add_argument(
        "-o", "--output", metavar="OUT.wav", help="write a WAV file instead of playing"
    )
    say.add_argument("text", nargs="+", help="what to say")
    check = with_config(
        "check", "validate config, reach the broker and the cloud, find the audio device"
    )
    check.add_argument(
        "--config-only",
        action="store_true",
        help="validate the config (and read the API key) only: what a reload would take",
    )
    commands["devices"] = sub.add_parser("devices", help="list audio output devices")
    discovery = with_config("discovery", "Home Assistant discovery: remove this device's entities")
    discovery.add_argument("action", choices=("remove",))
    cache = with_config("cache", "inspect, empty, or pre-fill the phrase cache")
    cache.add_argument("action", choices=("stats", "clear", "warm"))
    cache.add_argument(
        "file", nargs="?", metavar="FILE", help="warm: phrases, one per line or a YAML list"
    )
    cache.add_argument("-v", "--voice", help="warm: voice profile name (default: default_voice)")
    return p, commands


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options before or after a command's arguments, in any order: `cache warm -c FILE
    phrases.txt`, `cache warm phrases.txt -c FILE` and `cache -c FILE warm phrases.txt` alike."""
    top, commands = parsers()
    args = sys.argv[1:] if argv is None else argv
    at = next((n for n, arg in enumerate(args) if arg in commands), None)
    head = args[:at] if at is not None else args
    if at is None or any(arg != "--verbose" for arg in head):
        return top.parse_args(args)  # help, --version, or a usage error, said by argparse
    name = args[at]
    ns = commands[name].parse_intermixed_args(args[at + 1 :])
    ns.command = name
    ns.verbose = getattr(ns, "verbose", False) or "--verbose" in head
    return ns


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "devices":
        return cmd_devices(args)
    try:
        config = load_config(args.config)
        api_key = load_api_key(config.dashscope, os.environ)
    except ConfigError as exc:
        print(f"edge-tts: config error: {exc}", file=sys.stderr)
        return 2
    redact = setup_logging(args.verbose, _secrets(config, api_key))
    commands = {"say": cmd_say, "check": cmd_check, "cache": cmd_cache, "discovery": cmd_discovery}
    try:
        if args.command == "serve":
            return cmd_serve(args, config, api_key, redact)
        return commands[args.command](args, config, api_key)
    except ConfigError as exc:
        print(f"edge-tts: {exc}", file=sys.stderr)
        return 2
    except BadAnnouncement as exc:
        print(f"edge-tts: {exc.reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
