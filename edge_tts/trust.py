"""Whom edge-tts's TLS connections trust: the system's certificate authorities, looked up
as needed; one context for every connection to the cloud, a new one for the broker."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import threading


class _Authorities:
    """The one TLS context every cloud connection uses, trusting the system's authorities.

    Made anew for each connection (what websockets does when given none), the context read
    all of the system's ~140 authorities from its bundle: 20 ms of CPU here with the event
    loop held, 15 times the TLS handshake, several times more on a Pi, and 1.3 MiB, at every
    renewal of the warm connection (about once a minute, idle or not) and before every cold
    connection's first byte. Now one context serves every connection, and it looks an
    authority up in the system's hashed directory (/etc/ssl/certs, kept by
    update-ca-certificates beside the bundle) when a server names it, so it holds the one
    DashScope's chain needs. Where there is no such directory, or SSL_CERT_FILE names a file,
    the file is read whole, as Python does by default. It is made in a thread, and again when
    the file or the directory changed (ca-certificates updated), so a running daemon trusts
    what the system trusts now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._made_from: tuple[object, ...] = ()

    def _load(self, source: tuple[object, ...]) -> ssl.SSLContext:
        with self._lock:
            if self._context is None or self._made_from != source:
                self._context = _make(source)
                self._made_from = source
            return self._context

    async def context(self) -> ssl.SSLContext:
        source = _source()
        context = self._context
        if context is not None and self._made_from == source:
            return context
        return await asyncio.to_thread(self._load, source)


def _source() -> tuple[object, ...]:
    """Where the authorities are and when they last changed (cheap: two stats)."""
    paths = ssl.get_default_verify_paths()  # SSL_CERT_FILE / SSL_CERT_DIR, or the system's
    changed = []
    for path in (paths.cafile, paths.capath):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        changed.append(st and (st.st_mtime_ns, st.st_size))
    return (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.capath, *changed)


def _make(source: tuple[object, ...]) -> ssl.SSLContext:
    file_asked, _, capath = source[:3]
    if not file_asked and isinstance(capath, str) and _hashed(capath):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context()


def system_context() -> ssl.SSLContext:
    """A new TLS client context of one's own (to add a client certificate to, say), trusting
    the system's authorities as the cloud's does: looked up as needed."""
    return _make(_source())


def _hashed(directory: str) -> bool:
    """Whether OpenSSL can look authorities up in `directory` (a link named by the subject's
    hash, as c_rehash and update-ca-certificates make them)."""
    try:
        with os.scandir(directory) as entries:
            return any(re.fullmatch(r"[0-9a-f]{8}\.[0-9]+", e.name) for e in entries)
    except OSError:  # unreadable: the bundle file, then
        return False


_authorities = _Authorities()


async def cloud_context() -> ssl.SSLContext:
    """The TLS context for a connection to the cloud (made once; again if the system's
    authorities changed)."""
    return await _authorities.context()


_CLOCK = "is the system's clock right? see timedatectl"
_SYSTEM_AUTHORITIES = (
    "are the system's CA certificates (the package ca-certificates) installed and current? "
    "is something in between?"
)


def untrusted(
    who: str,
    exc: ssl.SSLCertVerificationError,
    *,
    names: str,
    authorities: str = _SYSTEM_AUTHORITIES,
) -> str:
    """Why `who` was refused and what to look at, by OpenSSL's verification code: the clock
    (not yet valid, expired), `names` (a hostname, e-mail or IP address mismatch), else
    `authorities`."""
    if exc.verify_code in (9, 10):
        hint = _CLOCK
    elif exc.verify_code in (62, 63, 64):
        hint = names
    else:
        hint = authorities
    return f"{who} is not trusted: {exc.verify_message.rstrip('.')} ({hint})"
