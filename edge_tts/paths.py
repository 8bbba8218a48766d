"""Where edge-tts keeps its files, found from the environment alone.

Run as the service, systemd names its directories (StateDirectory=, CacheDirectory=:
$STATE_DIRECTORY, $CACHE_DIRECTORY); run by a user, the XDG directories or their defaults
under $HOME. The password database is asked last, and only when nothing else names a
place: a service's dynamic user has no HOME and, without libnss-systemd, no entry there
(where `Path.home()` raises instead of answering).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError

Environ = Mapping[str, str]


def state_dir(environ: Environ | None = None) -> Path:
    """Where the queue journal, the usage counts and the broker's subscriptions are kept.
    Raises ConfigError, saying what to set, when nothing names a place."""
    env = os.environ if environ is None else environ
    found = _systemd(env, "STATE_DIRECTORY") or _xdg(env, "XDG_STATE_HOME", ".local/state")
    if found is None:
        raise ConfigError(
            "no directory for the queue and the counts: run edge-tts as the service "
            "(StateDirectory=), or set HOME or XDG_STATE_HOME"
        )
    return found


def cache_dir(environ: Environ | None = None) -> Path | None:
    """Where the phrase cache goes when `cache.dir` names no directory; None if nothing
    names a place."""
    env = os.environ if environ is None else environ
    return _systemd(env, "CACHE_DIRECTORY") or _xdg(env, "XDG_CACHE_HOME", ".cache")


def _systemd(env: Environ, name: str) -> Path | None:
    value = env.get(name, "").split(":")[0]  # several directories: the first is ours
    return Path(value) if value else None


def _xdg(env: Environ, name: str, default: str) -> Path | None:
    base = env.get(name) or ""
    if os.path.isabs(base):  # the XDG spec: a relative value is to be ignored
        return Path(base) / "edge-tts"
    home = env.get("HOME") or _home_of_user()
    return Path(home) / default / "edge-tts" if home else None


def _home_of_user() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or None
    except KeyError:  # a uid the password database does not know
        return None
