"""
The admin listener of C{[admin] listen}: /healthz and /metrics move there,
and the main listener responds to them with not_found.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from redis_ajax_push.config import ConfigError, parse_config

NOT_FOUND_BODY = (
    b'{"status": "error", "error_message": "Not Found", "error": "not_found"}'
)


async def fetch(url, method="GET"):
    response = await treq.request(method, url, persistent=False, timeout=10)
    return response.code, await response.content()


async def start_with_admin(start_daemon):
    """
    Start a daemon with an admin listener on a loopback port 0 and return
    it with the admin base URL.
    """
    daemon = await start_daemon(admin={"listen": "tcp:0:interface=127.0.0.1"})
    port = await daemon.service.admin.listening
    return daemon, f"http://127.0.0.1:{port.getHost().port}"


@pytest_twisted.ensureDeferred
async def test_admin_serves_health_and_metrics(start_daemon, redis_client):
    """
    With [admin] listen set, the admin listener serves /healthz and
    /metrics.
    """
    _, admin_url = await start_with_admin(start_daemon)

    code, body = await fetch(admin_url + "/healthz")
    assert code == 200
    assert json.loads(body) == {"status": "ok"}

    code, body = await fetch(admin_url + "/metrics")
    assert code == 200
    assert b"raps_requests_total" in body


@pytest_twisted.ensureDeferred
async def test_main_listener_hides_admin(start_daemon, redis_client):
    """
    With [admin] listen set, the main listener responds to /healthz and
    /metrics with 404 not_found and still serves tasks.
    """
    daemon, _ = await start_with_admin(start_daemon)
    redis_client.set("RA_D_a1", b'{"status": "done"}')

    assert await fetch(daemon.url("/healthz")) == (404, NOT_FOUND_BODY)
    assert await fetch(daemon.url("/metrics")) == (404, NOT_FOUND_BODY)
    assert (await fetch(daemon.url("/task/a1")))[0] == 200


@pytest_twisted.ensureDeferred
async def test_admin_serves_nothing_else(start_daemon, redis_client):
    """
    The admin listener responds to task paths with not_found and other methods
    with method_not_allowed.
    """
    _, admin_url = await start_with_admin(start_daemon)
    redis_client.set("RA_D_a2", b'{"status": "done"}')

    assert await fetch(admin_url + "/task/a2") == (404, NOT_FOUND_BODY)
    code, body = await fetch(admin_url + "/metrics", method="POST")
    assert code == 405
    assert json.loads(body)["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_admin_metrics_count_main(start_daemon, redis_client):
    """
    The admin listener's /metrics counts the polls of the main listener.
    """
    daemon, admin_url = await start_with_admin(start_daemon)
    redis_client.set("RA_D_a3", b'{"status": "done"}')
    assert (await fetch(daemon.url("/task/a3")))[0] == 200

    _, body = await fetch(admin_url + "/metrics")

    assert b'raps_requests_total{mode="poll",outcome="ok"} 1.0' in body


@pytest_twisted.ensureDeferred
async def test_default_serves_admin_on_main(daemon, redis_client):
    """
    Without [admin] listen, /healthz and /metrics are on the main listener
    and no admin listener is made.
    """
    assert daemon.service.admin is None
    assert (await fetch(daemon.url("/healthz")))[0] == 200
    assert (await fetch(daemon.url("/metrics")))[0] == 200


def test_admin_listen_validated():
    """
    An [admin] listen that is not a Twisted server endpoint string, or an
    unknown [admin] key, is a ConfigError naming the key.
    """
    with pytest.raises(ConfigError, match=r"^admin\.listen: 'nonsense:1'"):
        parse_config({"admin": {"listen": "nonsense:1"}})
    with pytest.raises(ConfigError, match=r"admin\.port"):
        parse_config({"admin": {"port": 1}})
    config = parse_config({"admin": {"listen": "tcp:9000:interface=127.0.0.1"}})
    assert config.admin.listen == "tcp:9000:interface=127.0.0.1"
    assert parse_config({}).admin.listen == ""
