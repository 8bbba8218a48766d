"""The cloud over TLS, as DashScope is served (wss://): every engine speaks through it, a
server the system's authorities do not vouch for is refused before the key is sent, and the
authorities are read once for every connection, again only when they changed."""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from edge_tts.errors import CloudUnavailable
from edge_tts.keeper import ConnectionKeeper, ConnectionSettings
from edge_tts.secret import Secret
from edge_tts.trust import untrusted

from conftest import API_KEY, Broker, Capture, Home, edge_tts, fake_cloud, write_config
from fake_dashscope import FakeDashScope, pcm_for
from test_every_engine import every_engine, spoken
from test_keeper import IDLE_S, Warm
from tls import SYSTEM_CA_FILE, Authority, authority, hashed_directory, stranger


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return authority(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trusted(certificates: Authority, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system's authorities and the test's in a hashed directory, as Debian keeps
    /etc/ssl/certs, where OpenSSL looks (SSL_CERT_DIR): for this process and the daemons it
    starts."""
    directory = certificates.directory_with_system()
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    return directory


@pytest.fixture
async def tls_cloud(certificates: Authority) -> AsyncIterator[FakeDashScope]:
    async with fake_cloud(tls=certificates.server(), idle_timeout_s=IDLE_S) as fake:
        assert fake.url.startswith("wss://")
        yield fake


@pytest.fixture
def contexts_made(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext]:
    """Every default TLS context made from here on (each reads the authorities), whoever
    makes it: edge-tts or, given none, websockets."""
    made: list[ssl.SSLContext] = []
    original: Callable[..., ssl.SSLContext] = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    return made


async def test_every_engine_speaks_over_tls_exactly(
    tmp_path: Path,
    broker: Broker,
    tls_cloud: FakeDashScope,
    home: Home,
    capture: Capture,
    trusted: Path,
) -> None:
    proc = await every_engine(tmp_path, broker, tls_cloud, home)
    try:
        started, pcm = await spoken(home, capture, {"text": "Over TLS.", "id": "cosy"})
        assert started["source"] == "cloud" and pcm == pcm_for("Over TLS.")
        started, pcm = await spoken(
            home, capture, {"text": "Qwen too.", "voice": "butler", "id": "qwen"}
        )
        assert started["source"] == "cloud" and pcm == pcm_for("Qwen too.", "Serena")
    finally:
        await proc.stop()
    assert API_KEY not in proc.stderr.decode()


@pytest.mark.parametrize(
    ("server", "why"),
    [
        # A machine in the middle with an authority of its own; the right authority's
        # certificate for another server.
        ("stranger", "unable to get local issuer certificate (are the system's CA certificates"),
        ("other name", "IP address mismatch, certificate is not valid for '127.0.0.1' (is"),
    ],
)
async def test_a_server_not_vouched_for_is_refused_before_the_key_is_sent(
    tmp_path: Path,
    broker: Broker,
    home: Home,
    capture: Capture,
    certificates: Authority,
    trusted: Path,
    server: str,
    why: str,
) -> None:
    if server == "stranger":
        impostor = stranger(tmp_path / "stranger")
    else:  # signed by the trusted authority: only the name is wrong
        impostor = certificates.issue(f"other-{tmp_path.name}", "DNS:dashscope.example")
    async with fake_cloud(tls=impostor.server()) as fake:
        proc = await every_engine(tmp_path, broker, fake, home)
        try:
            await home.say({"text": "Listen to me.", "id": "mitm", "voice": "default"})
            end = await home.log.outcome("mitm", timeout=30)
        finally:
            await proc.stop()
        assert fake.handshakes == 0  # no HTTP request reached it: no Authorization header
    # The fallback voice spoke it, saying why the cloud did not.
    assert end["event"] == "finished" and end["source"] == "fallback", end
    assert f"DashScope at {urlsplit(fake.url).netloc} is not trusted: " in end["reason"]
    assert why in end["reason"]
    assert API_KEY not in proc.stderr.decode() and API_KEY not in str(home.log.events)


async def test_renewals_read_the_authorities_once(
    tls_cloud: FakeDashScope, trusted: Path, contexts_made: list[ssl.SSLContext]
) -> None:
    fake = tls_cloud
    async with Warm(fake) as warm:
        # The warm connection, then three renewals (the fake's idle window is IDLE_S).
        await fake.wait_for(lambda: fake.handshakes >= 4, timeout=IDLE_S * 8)
        audio, request = await warm.say("Still warm.")
    assert audio == pcm_for("Still warm.") and request.trace.connection == "warm"
    assert warm.keeper.stats.renewals >= 3
    assert len(contexts_made) == 1  # not one per connection


@pytest.mark.parametrize("kept_as", ["directory", "file"])
async def test_authorities_changed_on_disk_are_trusted_without_a_restart(
    tmp_path: Path,
    tls_cloud: FakeDashScope,
    certificates: Authority,
    monkeypatch: pytest.MonkeyPatch,
    contexts_made: list[ssl.SSLContext],
    kept_as: str,
) -> None:
    # The system's authorities alone: the test's is not among them yet. Kept as Debian
    # keeps them (a hashed directory, and a bundle file that is not read), or as a file
    # SSL_CERT_FILE names.
    bundle, directory = tmp_path / "ca-certificates.crt", tmp_path / "certs"
    shutil.copyfile(SYSTEM_CA_FILE, bundle)
    hashed_directory(directory)
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    if kept_as == "file":
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    settings = ConnectionSettings(keep_warm=False, connect_timeout_s=5)
    keeper = ConnectionKeeper(tls_cloud.url, Secret(API_KEY), settings)
    with pytest.raises(
        CloudUnavailable,
        match=r"is not trusted: unable to get local issuer certificate \(are the system's CA "
        r"certificates \(the package ca-certificates\) installed and current\? is something "
        r"in between\?\)",
    ):
        await keeper.connect()
    with pytest.raises(CloudUnavailable):
        await keeper.connect()
    assert len(contexts_made) == 1  # made once for both tries
    # The package is updated: the authority added to both, the file replaced as apt does it.
    hashed_directory(directory, certificates.ca_file)
    new = tmp_path / "ca-certificates.new"
    new.write_bytes(bundle.read_bytes() + certificates.ca_file.read_bytes())
    os.replace(new, bundle)
    ws = await keeper.connect()
    held = ws.transport.get_extra_info("sslcontext").cert_store_stats()["x509_ca"]
    await ws.close()
    assert len(contexts_made) == 2
    assert tls_cloud.handshakes == 1
    # Looked up in the directory, the context holds the one authority the server's chain
    # needed; read from the file, every one of them.
    if kept_as == "directory":
        assert held == 1
    else:
        assert held == len(ssl.create_default_context(cafile=str(bundle)).get_ca_certs()) > 100


CLOCK = "is the system's clock right? see timedatectl"
NAMES = "is the name right?"
AUTHORITIES = "is the authority right?"


@pytest.mark.parametrize(
    ("code", "hint"),
    # Not yet valid, expired; a hostname, e-mail or IP address mismatch; anything else.
    [
        (9, CLOCK),
        (10, CLOCK),
        (62, NAMES),
        (63, NAMES),
        (64, NAMES),
        (11, AUTHORITIES),
        (65, AUTHORITIES),
    ],
)
def test_each_refusal_says_what_to_look_at(code: int, hint: str) -> None:
    exc = ssl.SSLCertVerificationError()
    exc.verify_code, exc.verify_message = code, "what OpenSSL says."
    reason = untrusted("the peer", exc, names=NAMES, authorities=AUTHORITIES)
    assert reason == f"the peer is not trusted: what OpenSSL says ({hint})"


async def test_a_certificate_file_named_but_missing_leaves_the_directory(
    tls_cloud: FakeDashScope, trusted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted / "no-such-file.pem"))
    settings = ConnectionSettings(keep_warm=False, connect_timeout_s=5)
    ws = await ConnectionKeeper(tls_cloud.url, Secret(API_KEY), settings).connect()
    await ws.close()
    assert tls_cloud.handshakes == 1


# --- the broker over TLS -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "trusted_by"),
    [
        ({}, "the system"),  # a broker with a certificate from a public authority
        ({"ca_file": "CA"}, "mqtt.tls.ca_file"),  # the broker's own authority named
    ],
)
async def test_the_broker_over_tls_is_trusted_as_configured(
    tmp_path: Path,
    certificates: Authority,
    trusted: Path,
    dashscope: FakeDashScope,
    tls: dict[str, str],
    trusted_by: str,
) -> None:
    broker = Broker(tmp_path, tls=(certificates.cert_file, certificates.key_file))
    broker.start()
    try:
        tls = {k: str(certificates.ca_file) for k in tls}
        config = write_config(tmp_path / "c.yaml", broker, dashscope, mqtt__tls=tls)
        run = await edge_tts("check", "-c", str(config))
        stranger_ca = stranger(tmp_path / "stranger").ca_file
        config = write_config(
            tmp_path / "c.yaml", broker, dashscope, mqtt__tls={"ca_file": str(stranger_ca)}
        )
        refused = await edge_tts("check", "-c", str(config))
    finally:
        broker.stop()
    assert f"ok   broker {broker.host}:{broker.port}" in run.out, (trusted_by, run.all)
    assert f"FAIL broker {broker.host}:{broker.port}: " in refused.out, refused.all
    assert (
        "the broker is not trusted: unable to get local issuer certificate (does "
        "mqtt.tls.ca_file name the authority"
    ) in refused.out
