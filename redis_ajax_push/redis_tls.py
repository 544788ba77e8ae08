"""
TLS for rediss:// connections: the client options built from the PEM files
named by the [redis] config keys tls_ca, tls_cert and tls_key.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)

from redis_ajax_push.redis_url import RedisURL

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def load_certificates(path: str) -> list[Certificate]:
    """
    Load every certificate of a PEM file, such as a CA bundle.

    @raise OSError: when the file cannot be read.
    @raise ValueError: when it contains no PEM certificate.
    """
    blocks = _PEM_CERTIFICATE.findall(Path(path).read_bytes())
    if not blocks:
        raise ValueError(f"{path} contains no PEM certificate")
    return [Certificate.loadPEM(block) for block in blocks]


def client_tls_options(hostname: str, url: RedisURL) -> IOpenSSLClientConnectionCreator:
    """
    Build the TLS client options for a connection to C{hostname}, a DNS
    name or an IP address that the server certificate must match.

    Without C{url.tls_ca} the system's trusted CAs verify the server. With
    C{url.tls_cert} and C{url.tls_key} the client presents that certificate.

    @raise OSError: when a file cannot be read.
    @raise ValueError: or an OpenSSL error when a file is not valid PEM or
        the key does not match the certificate.
    """
    trust_root = None
    if url.tls_ca is not None:
        trust_root = trustRootFromCertificates(load_certificates(url.tls_ca))
    client_certificate = None
    if url.tls_cert is not None and url.tls_key is not None:
        pem = Path(url.tls_cert).read_bytes() + b"\n" + Path(url.tls_key).read_bytes()
        client_certificate = PrivateCertificate.loadPEM(pem)
    return optionsForClientTLS(
        hostname, trustRoot=trust_root, clientCertificate=client_certificate
    )
