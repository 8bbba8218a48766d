"""Certificates for a fake cloud served over TLS, as DashScope is (wss://), made with the
`openssl` command (Debian's openssl, which ca-certificates depends on).

`authority(dir)` makes a certificate authority and, signed by it, a certificate for
127.0.0.1 and localhost (`.issue()` makes another, for other names); `.server()` is the
server's SSL context, `.directory_with_system()` a hashed directory of the system's
authorities and this one (what SSL_CERT_DIR points a client at, so it trusts the fake as it
trusts the real service; Debian keeps /etc/ssl/certs so). `stranger(dir)` is another
authority's certificate for the same names: a machine in the middle.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEM_CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")
SYSTEM_CA_DIR = Path("/etc/ssl/certs")
DIRECTORY = "system-and-test-ca"  # directory_with_system()'s, beside the authority's files


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Authority:
    ca_file: Path
    ca_key: Path
    cert_file: Path  # the server's certificate, signed by ca_file
    key_file: Path

    def issue(self, name: str, hosts: str) -> Authority:
        """The same authority with a new server certificate, for `hosts` (subjectAltName)."""
        directory = self.ca_file.parent
        key, cert = directory / f"{name}.key", directory / f"{name}.pem"
        csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
        _openssl("req", *_RSA, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
        ext.write_text(f"subjectAltName={hosts}\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file), "-CAkey",
            str(self.ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
            "-extfile", str(ext),
        )  # fmt: skip
        return Authority(self.ca_file, self.ca_key, cert, key)

    def server(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def directory_with_system(self) -> Path:
        """A hashed directory of the system's authorities and this one, as
        update-ca-certificates keeps /etc/ssl/certs (for a client's SSL_CERT_DIR)."""
        return hashed_directory(self.ca_file.with_name(DIRECTORY), self.ca_file)


def hashed_directory(directory: Path, *extra: Path) -> Path:
    """The system's authorities and `extra` CA files in `directory`, hashed for lookup as
    update-ca-certificates does it (again after each call: files may be added)."""
    directory.mkdir(parents=True, exist_ok=True)
    for cert in [*SYSTEM_CA_DIR.glob("*.pem"), *extra]:
        shutil.copyfile(cert, directory / cert.name)
    _openssl("rehash", str(directory))
    return directory


_RSA = ("-newkey", "rsa:2048", "-nodes")  # as DashScope's chain is


def authority(directory: Path, name: str = "edge-tts test") -> Authority:
    """A new authority and a server certificate it signed for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / f"{name}-ca.key", directory / f"{name}-ca.pem"
    _openssl(
        "req", "-x509", *_RSA, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", f"/CN={name} CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign",
    )  # fmt: skip
    return Authority(ca, ca_key, ca, ca_key).issue(name, "IP:127.0.0.1,DNS:localhost")


def stranger(directory: Path) -> Authority:
    """A certificate for the same names from an authority nobody trusts."""
    return authority(directory, name="stranger")
