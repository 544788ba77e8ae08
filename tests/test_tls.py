"""
HTTPS: raps listening on a Twisted ssl: endpoint string with a self-signed
certificate made by the test, in process and as a twistd subprocess.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from redis_ajax_push.config import ConfigError, parse_config
from redis_ajax_push.testing import free_port
from tests.support import ChannelSpy
from tests.twistd_process import raps_command, running_twistd, stop_twistd

RUNNING = b'{"status": "running", "progress": 10}'
READY_TIMEOUT = 20


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """
    A self-signed certificate for localhost and 127.0.0.1, valid for one
    day: the paths of its key and certificate PEM files.
    """
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(names, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )

    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def ssl_endpoint(certificate, port=0):
    """
    Return the ssl: server endpoint string of docs/deploy.md for C{port}.
    """
    key_path, cert_path = certificate
    return f"ssl:{port}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"


def https_client(certificate):
    """
    Return a treq client that trusts only the test's certificate.
    """
    _, cert_path = certificate
    trust_root = Certificate.loadPEM(cert_path.read_bytes())
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy))


async def start_https_daemon(start_daemon, certificate, **sections):
    """
    Start an in-process daemon on an ssl: endpoint and return its
    https:// base URL on localhost, the name in the certificate.
    """
    daemon = await start_daemon(http={"listen": ssl_endpoint(certificate)}, **sections)
    return f"https://localhost:{daemon.port}"


@pytest_twisted.ensureDeferred
async def test_https_poll(start_daemon, redis_client, certificate):
    """
    A daemon on an ssl: endpoint serves a poll over HTTPS to a client that
    verifies the certificate.
    """
    base_url = await start_https_daemon(start_daemon, certificate)
    redis_client.set("RA_D_tls1", RUNNING)

    response = await https_client(certificate).get(f"{base_url}/task/tls1")

    assert response.code == 200
    assert await response.content() == RUNNING


@pytest_twisted.ensureDeferred
async def test_https_watch_heartbeats(start_daemon, redis_client, certificate):
    """
    A watch over HTTPS gets its heartbeats and then the update, like over
    plain HTTP.
    """
    base_url = await start_https_daemon(
        start_daemon, certificate, watch={"heartbeat_interval": 0.05}
    )
    redis_client.set("RA_D_tls2", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_tls2")
    try:
        pending = https_client(certificate).get(f"{base_url}/task/tls2?watch")
        await spy.wait_for_kills(1)
        # The response arrives with the status line, which a heartbeat sends.
        response = await pending
        redis_client.publish("RA_SC_tls2", b'{"status": "done"}')
        body = await response.content()
    finally:
        spy.close()

    assert response.code == 200
    assert body.startswith(b"\n")
    assert body.lstrip(b"\n") == RUNNING


def test_config_rejects_missing_key(tmp_path):
    """
    An ssl: listen string whose key file does not exist stops startup with
    an error naming http.listen.
    """
    missing = tmp_path / "missing.pem"
    listen = f"ssl:0:interface=127.0.0.1:privateKey={missing}:certKey={missing}"

    with pytest.raises(ConfigError) as raised:
        parse_config({"http": {"listen": listen}})

    assert str(raised.value).startswith("http.listen: ")
    assert "No such file or directory" in str(raised.value)


def fetch_https_when_ready(url, context, process, log_path):
    """
    GET C{url} over HTTPS once the daemon accepts connections and return the
    status and body.

    @raise AssertionError: when the daemon exits or does not accept a
        connection within READY_TIMEOUT seconds.
    """
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise AssertionError(f"twistd exited with {process.returncode}:\n{log}")
        try:
            with opener.open(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError):
                raise
        if time.monotonic() > deadline:
            log = log_path.read_text(errors="replace")
            raise AssertionError(
                f"twistd did not accept connections in {READY_TIMEOUT} s:\n{log}"
            )
        time.sleep(0.05)


def test_twistd_serves_https(tmp_path, redis_server, redis_client, certificate):
    """
    twistd raps with an ssl: --listen string serves HTTPS to the stdlib
    client with a context that trusts only the test's certificate.
    """
    redis_client.set("RA_D_tls3", RUNNING)
    port = free_port()
    log_path = tmp_path / "twistd.out"
    command = raps_command(
        "--listen", ssl_endpoint(certificate, port), "--redis", redis_server.url
    )
    context = ssl.create_default_context(cafile=str(certificate[1]))

    with running_twistd(command, tmp_path, log_path) as process:
        status, body = fetch_https_when_ready(
            f"https://localhost:{port}/task/tls3", context, process, log_path
        )
        exit_status = stop_twistd(process)

    assert status == 200
    assert json.loads(body) == {"status": "running", "progress": 10}
    assert exit_status == 0
