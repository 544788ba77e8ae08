"""
Private redis-server processes with any arguments, for tests that need TLS,
a unix socket, ACL users, replicas or Sentinels. Every server listens on
127.0.0.1 or a socket in the test's temporary directory only.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Redis 7.0 logs "Ready to accept connections" once it listens on TCP and
# "The server is now ready to accept connections at <path>" on a socket.
READY_TEXT = "ready to accept connections"


class RedisProcess:
    """
    One redis-server (or Sentinel) started with C{arguments}, logging to
    C{workdir}/<name>.log. L{start} waits until the log contains
    C{ready_text}, case ignored.
    """

    def __init__(
        self,
        workdir: Path,
        name: str,
        arguments: list[str],
        ready_text: str = READY_TEXT,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; apt-get install redis-server")
        self.log_path = workdir / f"{name}.log"
        self._command = [binary, *arguments, "--logfile", str(self.log_path)]
        self._workdir = workdir
        self._ready_text = ready_text.lower()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the process and wait until its log contains the ready text.

        @raise RuntimeError: when it exits or is not ready within C{timeout}
            seconds; the message contains the log.
        """
        self._process = subprocess.Popen(
            self._command,
            cwd=self._workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log()}")
            if self._ready_text in self.log().lower():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """
        Stop the process if it runs and wait for it to exit.
        """
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class TLSFiles:
    """
    PEM files of a test CA, a server certificate for 127.0.0.1 and
    localhost, and a client certificate, all signed by that CA.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    is_ca: bool = False,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_tls_files(directory: Path, prefix: str = "") -> TLSFiles:
    """
    Generate a CA and the server and client certificates it signs into
    C{directory}, with file names starting with C{prefix}.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("raps test CA", ca_key, None, None, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server_cert = _certificate(
        "127.0.0.1", server_key, ca_cert.subject, ca_key, names=server_names
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate("raps", client_key, ca_cert.subject, ca_key)

    files = TLSFiles(
        ca=directory / f"{prefix}ca.pem",
        server_cert=directory / f"{prefix}server.pem",
        server_key=directory / f"{prefix}server.key",
        client_cert=directory / f"{prefix}client.pem",
        client_key=directory / f"{prefix}client.key",
    )
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    _write_key(files.server_key, server_key)
    _write_key(files.client_key, client_key)
    return files
