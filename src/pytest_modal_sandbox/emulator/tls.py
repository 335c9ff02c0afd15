"""A throwaway certificate authority per emulator, so ``Tunnel.url`` (always https) works.

The real client reports every encrypted tunnel as ``https://host:port``.  The emulator's
tunnels terminate TLS with a server certificate for ``127.0.0.1``/``localhost``/``::1`` signed
by a CA made for this emulator instance; the CA's PEM file is reported to callers
(``MODAL_EMULATOR_CA_FILE=...``) so ``requests.get(url, verify=ca_file)`` or
``ssl.create_default_context(cafile=ca_file)`` verifies.  The same port also accepts plain
connections (the runtime sniffs the first byte), so ``http://`` works without any CA.

Built with the ``openssl`` command line tool (present on every Debian/Ubuntu machine), which
keeps ``cryptography`` out of the dependencies.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable

_DAYS = "30"
_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the CA certificate (give it to clients) and the server's cert and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self, *, h2: bool = False) -> ssl.SSLContext:
        """A server-side context for tunnels.

        ALPN offers ``h2`` only for ``h2_ports`` (whose servers speak HTTP/2); an ordinary
        encrypted port offers ``http/1.1``, so an h2-capable client (curl, httpx) does not
        send HTTP/2 frames to an HTTP/1.1 server behind the tunnel.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])
        return ctx


def _openssl(args: list[str], cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise BackendUnavailable(
            "the Modal emulator needs the 'openssl' command to make its tunnel certificates: "
            "install it (apt-get install openssl)"
        )
    proc = subprocess.run(
        [exe, *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise BackendUnavailable(
            f"'openssl {args[0]}' failed making the emulator's tunnel certificates "
            f"(exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
        )


def make_tls_material(directory: str | os.PathLike[str]) -> TlsMaterial:
    """Create a fresh CA and a server certificate for loopback under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        [
            "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", _DAYS,
            "-subj", "/CN=pytest-modal-sandbox emulator CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        ],
        d,
    )  # fmt: skip
    _openssl(["req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
              "-subj", "/CN=localhost"], d)  # fmt: skip
    (d / "server.ext").write_text(_SERVER_EXT)
    _openssl(
        [
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", _DAYS, "-extfile", "server.ext",
        ],
        d,
    )  # fmt: skip
    for name in ("ca.key", "server.key"):
        os.chmod(d / name, 0o600)
    return TlsMaterial(d / "ca.pem", d / "server.pem", d / "server.key")
